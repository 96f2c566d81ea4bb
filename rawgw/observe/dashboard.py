"""The /dashboard page: one self-contained HTML document, no external assets."""

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>rawgw dashboard</title></head>
<body><h1>rawgw</h1><pre id="out">loading</pre>
<script>
async function tick(){const r=await fetch('/metrics.json');document.getElementById('out').textContent=JSON.stringify(await r.json(),null,2);}
tick();setInterval(tick,2000);
</script></body></html>
"""
