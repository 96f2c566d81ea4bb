"""The /dashboard page: one self-contained HTML document, no external assets.

It polls ``metrics.json`` (relative, so it also works behind a path prefix) every 2 s and
renders the snapshot built by ``rawgw.observe.prometheus.snapshot``. Every value the page
inserts goes through ``textContent`` or ``setAttribute``; nothing from the snapshot is ever
parsed as HTML.

When the gateway wants a key for /metrics.json, a browser cannot send one by itself: the
page takes it from ``#key=...`` in the URL (then strips the fragment from the address bar)
or from an input field, keeps it in ``sessionStorage`` (gone when the tab closes) and sends
it as ``Authorization: Bearer``. When the gateway has ``[auth.github]`` (``auth/me`` does not
answer 404), the same box offers "Sign in with GitHub" (``#signin-github``), which comes
back here signed in: the session cookie then reads metrics.json (never /v1/...).

Element ids (stable, read by tests/test_dashboard.py): ``conn-status``, ``updated``,
``uptime``, ``req-rate``, ``req-rate-avg``, ``requests-total``, ``status-class-2xx``,
``status-class-4xx``, ``status-class-5xx``, ``status-<code>``, ``provider-requests-<provider>``,
``latency-p50``, ``latency-p99``, ``latency-mean``, ``overhead-p50``, ``overhead-p99``,
``tokens-prompt``, ``tokens-completion``, ``tokens-total``,
``tokens-<provider/model>-prompt`` / ``-completion``, ``open-connections``,
``active-streams``, ``process-cpu`` (% of one core between polls), ``process-rss`` /
``process-vms`` (MiB), ``process-fds``, ``process-max-fds``, ``failovers``, ``rate-limited``, ``cache-hit``, ``cache-miss``,
``breaker-<provider>``, ``key-<provider>-<i>``, ``key-state-<provider>-<i>``,
``key-cooldown-<provider>-<i>``, ``key-requests-<provider>-<i>``,
``key-failures-<provider>-<i>``, ``errors`` (the table body of recent errors, newest first,
one ``tr.error-row`` each). In ids, characters other than ``A-Za-z0-9_.:/-`` become ``_``.
Numbers are rendered with ``,`` thousands separators; a value not known yet is ``—``.
"""

PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>rawgw dashboard</title>
<style>
:root {
  color-scheme: light dark;
  --bg: #f6f7f9; --panel: #ffffff; --fg: #1d2430; --muted: #6a7382; --line: #e2e6ec;
  --ok: #1f8a4c; --warn: #b7791f; --bad: #c0392b; --accent: #2f6fdb;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #14171c; --panel: #1c2027; --fg: #e3e7ee; --muted: #8c95a3; --line: #2c323c;
    --ok: #3fb96f; --warn: #e0a43c; --bad: #ef6b5b; --accent: #6b9cf0;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
header {
  display: flex; align-items: center; gap: 14px; flex-wrap: wrap;
  padding: 12px 20px; border-bottom: 1px solid var(--line); background: var(--panel);
}
header h1 { font-size: 18px; margin: 0; letter-spacing: .02em; }
header .meta { color: var(--muted); font-size: 13px; }
header .spacer { flex: 1; }
.pill {
  display: inline-block; padding: 2px 9px; border-radius: 999px; font-size: 12px;
  font-weight: 600; border: 1px solid currentColor;
}
.pill.live { color: var(--ok); } .pill.stale { color: var(--warn); } .pill.bad { color: var(--bad); }
.pill.idle { color: var(--muted); }
main { padding: 16px 20px 28px; max-width: 1400px; margin: 0 auto; }
.cards { display: grid; grid-template-columns: repeat(6, minmax(0, 1fr)); gap: 12px; }
@media (max-width: 1150px) { .cards { grid-template-columns: repeat(3, minmax(0, 1fr)); } }
@media (max-width: 640px) { .cards { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
@media (max-width: 420px) { .cards { grid-template-columns: 1fr; } }
.card, section {
  background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
}
.card h2, section h2 {
  margin: 0 0 6px; font-size: 12px; font-weight: 600; color: var(--muted);
  text-transform: uppercase; letter-spacing: .06em;
}
.big { font-size: 28px; font-weight: 600; font-variant-numeric: tabular-nums; line-height: 1.15; }
.unit { color: var(--muted); font-size: 13px; margin-left: 3px; }
.le { color: var(--muted); font-size: 16px; margin-right: 2px; font-weight: 400; }
.sub { color: var(--muted); font-size: 12.5px; margin-top: 4px; font-variant-numeric: tabular-nums; }
.sub b { color: var(--fg); font-weight: 600; }
.pair { display: flex; gap: 14px; flex-wrap: wrap; }
.pair .big { font-size: 24px; }
.nw { white-space: nowrap; }
.classes .nw { margin-right: 5px; }
.pair > div { min-width: 0; }
.lbl { color: var(--muted); font-size: 12px; }
svg.spark { display: block; width: 100%; height: 30px; margin-top: 6px; }
svg.spark polyline { fill: none; stroke: var(--accent); stroke-width: 1.5; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(420px, 100%), 1fr)); gap: 12px; margin-top: 12px; }
section.wide { margin-top: 12px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; }
tr:last-child td { border-bottom: none; }
td.empty { color: var(--muted); font-style: italic; }
td.msg { word-break: break-word; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.state { font-weight: 600; }
.state.active, .state.closed { color: var(--ok); }
.state.cooling, .state.half-open { color: var(--warn); }
.state.disabled, .state.open { color: var(--bad); }
.st2 { color: var(--ok); } .st4 { color: var(--warn); } .st5 { color: var(--bad); }
#keybox { display: none; margin: 0 0 12px; }
#keybox.show { display: block; }
#keybox form { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
#keybox input {
  flex: 1; min-width: 220px; padding: 6px 8px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--bg); color: var(--fg); font: inherit;
}
button {
  padding: 6px 12px; border-radius: 6px; border: 1px solid var(--line); background: var(--bg);
  color: var(--fg); font: inherit; cursor: pointer;
}
button.link { border: none; background: none; color: var(--accent); padding: 0; font-size: 13px; }
#signin-github { display: none; margin: 0 0 8px; }
#signin-github.show { display: inline-block; padding: 6px 12px; border-radius: 6px; background: var(--accent); color: #fff; text-decoration: none; }
#forget { display: none; }
#forget.show { display: inline; }
</style>
</head>
<body>
<header>
  <h1>rawgw</h1>
  <span id="conn-status" class="pill idle">connecting</span>
  <span class="meta">updated <span id="updated">&mdash;</span></span>
  <span class="meta">uptime <span id="uptime">&mdash;</span></span>
  <span class="spacer"></span>
  <button id="forget" class="link" type="button">forget key</button>
  <span class="meta">refresh 2 s</span>
</header>
<main>
  <section id="keybox">
    <h2>Gateway key</h2>
    <p id="keymsg" class="sub">This gateway needs a key for /metrics.json. It is kept in this tab only (sessionStorage).</p>
    <a id="signin-github" class="button">Sign in with GitHub</a>
    <form id="keyform" autocomplete="off">
      <input id="keyinput" type="password" placeholder="gateway key" spellcheck="false" autocomplete="off">
      <button type="submit">Use key</button>
    </form>
  </section>

  <div class="cards">
    <div class="card">
      <h2>Request rate</h2>
      <div class="big"><span id="req-rate">&mdash;</span><span class="unit">req/s</span></div>
      <div class="sub">avg since start <b id="req-rate-avg">&mdash;</b>/s</div>
      <svg class="spark" id="spark" viewBox="0 0 100 30" preserveAspectRatio="none"><polyline id="spark-line" points=""></polyline></svg>
    </div>
    <div class="card">
      <h2>Requests</h2>
      <div class="big" id="requests-total">&mdash;</div>
      <div class="sub classes"><span class="nw"><span class="st2">2xx</span> <b id="status-class-2xx">&mdash;</b></span>
        <span class="nw"><span class="st4">4xx</span> <b id="status-class-4xx">&mdash;</b></span>
        <span class="nw"><span class="st5">5xx</span> <b id="status-class-5xx">&mdash;</b></span></div>
      <div class="sub" id="cluster" hidden title="every instance sharing the [state] server, last hour">cluster, 1 h:
        <b id="cluster-requests">&mdash;</b> requests &middot; <b id="cluster-tokens">&mdash;</b> tokens</div>
    </div>
    <div class="card">
      <h2>Latency</h2>
      <div class="pair">
        <div><div class="lbl">p50</div><div class="big"><span class="le" title="p50/p99 are histogram bucket upper bounds">&le;</span><span id="latency-p50">&mdash;</span><span class="unit">ms</span></div></div>
        <div><div class="lbl">p99</div><div class="big"><span class="le" title="p50/p99 are histogram bucket upper bounds">&le;</span><span id="latency-p99">&mdash;</span><span class="unit">ms</span></div></div>
      </div>
      <div class="sub">mean <b id="latency-mean">&mdash;</b> ms</div>
    </div>
    <div class="card">
      <h2>Gateway overhead</h2>
      <div class="pair">
        <div><div class="lbl">p50</div><div class="big"><span class="le" title="p50/p99 are histogram bucket upper bounds">&le;</span><span id="overhead-p50">&mdash;</span><span class="unit">ms</span></div></div>
        <div><div class="lbl">p99</div><div class="big"><span class="le" title="p50/p99 are histogram bucket upper bounds">&le;</span><span id="overhead-p99">&mdash;</span><span class="unit">ms</span></div></div>
      </div>
      <div class="sub">the gateway's own time</div>
    </div>
    <div class="card">
      <h2>Tokens</h2>
      <div class="pair">
        <div><div class="lbl">prompt</div><div class="big" id="tokens-prompt">&mdash;</div></div>
        <div><div class="lbl">completion</div><div class="big" id="tokens-completion">&mdash;</div></div>
      </div>
      <div class="sub">total <b id="tokens-total">&mdash;</b></div>
    </div>
    <div class="card">
      <h2>Connections</h2>
      <div class="pair">
        <div><div class="lbl">open</div><div class="big" id="open-connections">&mdash;</div></div>
        <div><div class="lbl">active streams</div><div class="big" id="active-streams">&mdash;</div></div>
      </div>
      <div class="sub"><span class="nw">failovers <b id="failovers">&mdash;</b></span> &middot;
        <span class="nw">rate-limited <b id="rate-limited">&mdash;</b></span> &middot;
        <span class="nw">cache <b id="cache-hit">&mdash;</b> hit / <b id="cache-miss">&mdash;</b> miss</span></div>
    </div>
    <div class="card">
      <h2>Process</h2>
      <div class="pair">
        <div><div class="lbl">CPU</div><div class="big"><span id="process-cpu">&mdash;</span><span class="unit">%</span></div></div>
        <div><div class="lbl">resident</div><div class="big"><span id="process-rss">&mdash;</span><span class="unit">MiB</span></div></div>
      </div>
      <div class="sub"><span class="nw">virtual <b id="process-vms">&mdash;</b> MiB</span> &middot;
        <span class="nw">fds <b id="process-fds">&mdash;</b> / <b id="process-max-fds">&mdash;</b></span></div>
    </div>
  </div>

  <div class="grid2">
    <section>
      <h2>Status codes</h2>
      <table><thead><tr><th>status</th><th class="num">requests</th></tr></thead>
        <tbody id="status-table"><tr><td class="empty" colspan="2">no requests yet</td></tr></tbody></table>
      <h2 style="margin-top:14px">Requests by provider</h2>
      <table><thead><tr><th>provider</th><th class="num">requests</th></tr></thead>
        <tbody id="provider-table"><tr><td class="empty" colspan="2">none yet</td></tr></tbody></table>
    </section>
    <section>
      <h2>Tokens by provider / model</h2>
      <table><thead><tr><th>provider / model</th><th class="num">prompt</th><th class="num">completion</th><th class="num">total</th></tr></thead>
        <tbody id="tokens-table"><tr><td class="empty" colspan="4">no usage reported yet</td></tr></tbody></table>
    </section>
  </div>

  <section class="wide">
    <h2>Providers and keys</h2>
    <table><thead><tr><th>provider</th><th>type</th><th>breaker</th><th>key</th><th>state</th>
      <th class="num">cooldown</th><th class="num">requests</th><th class="num">failures</th><th class="num">429s</th></tr></thead>
      <tbody id="keys"><tr><td class="empty" colspan="9">&mdash;</td></tr></tbody></table>
  </section>

  <section class="wide">
    <h2>Recent errors</h2>
    <table><thead><tr><th>time</th><th>status</th><th>provider</th><th>request id</th><th>message</th></tr></thead>
      <tbody id="errors"><tr><td class="empty" colspan="5">no errors</td></tr></tbody></table>
  </section>
</main>
<script>
(function () {
  "use strict";
  var POLL_MS = 2000, WINDOW_MS = 10000, SPARK_POINTS = 60, STORE = "rawgw.dashboard.key";
  var samples = [];   // {t: page clock ms, n: requests_total, up: uptime_s}
  var rates = [];     // per-interval rates for the sparkline
  var cpuPrev = null; // {t: page clock ms, cpu: process cpu_seconds, start: start_time}
  var lastOk = 0, busy = false;

  function $(id) { return document.getElementById(id); }
  function safeId(s) { return String(s).replace(/[^A-Za-z0-9_.:\\/-]/g, "_"); }
  function fmtInt(v) {
    return (typeof v === "number" && isFinite(v)) ? Math.round(v).toLocaleString("en-US") : "\\u2014";
  }
  function fmtNum(v, digits) {
    if (typeof v !== "number" || !isFinite(v)) return "\\u2014";
    var d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : Math.abs(v) >= 1 ? 2 : 3) : digits;
    return v.toLocaleString("en-US", {minimumFractionDigits: 0, maximumFractionDigits: d});
  }
  function fmtDur(s) {
    if (typeof s !== "number" || !isFinite(s)) return "\\u2014";
    s = Math.floor(s);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + r + "s";
    return r + "s";
  }
  function fmtTime(epoch) {
    if (typeof epoch !== "number") return "\\u2014";
    var d = new Date(epoch * 1000);
    function p(n) { return (n < 10 ? "0" : "") + n; }
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function setText(id, text) { var e = $(id); if (e) e.textContent = text; }
  function el(tag, text, cls, id) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    if (id) e.id = id;
    return e;
  }
  function fill(tbody, rows, cols, emptyText) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    if (!rows.length) {
      var tr = el("tr"), td = el("td", emptyText, "empty");
      td.colSpan = cols; tr.appendChild(td); tbody.appendChild(tr);
      return;
    }
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  function status(text, cls) { var e = $("conn-status"); e.textContent = text; e.className = "pill " + cls; }

  // ---- the key: #key=... in the URL, the input field, sessionStorage ----
  function getKey() { try { return sessionStorage.getItem(STORE) || ""; } catch (e) { return memKey; } }
  var memKey = "";
  function setKey(k) {
    memKey = k;
    try { if (k) sessionStorage.setItem(STORE, k); else sessionStorage.removeItem(STORE); } catch (e) {}
    $("forget").className = k ? "link show" : "link";
  }
  (function fromFragment() {
    var h = location.hash.replace(/^#/, "");
    if (!h) return;
    var params = new URLSearchParams(h), k = params.get("key");
    if (k === null) return;
    setKey(k);
    params.delete("key");
    var rest = params.toString();
    try { history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : "")); } catch (e) {}
  })();
  $("forget").className = getKey() ? "link show" : "link";
  $("forget").addEventListener("click", function () { setKey(""); tick(); });
  $("keyform").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var v = $("keyinput").value.trim();
    $("keyinput").value = "";
    setKey(v);
    tick();
  });

  // ---- rendering ----
  function renderRate(snap) {
    var now = performance.now(), n = snap.requests_total;
    var prev = samples.length ? samples[samples.length - 1] : null;
    // A restart (or a different worker answering) makes the counters go back: start over.
    if (prev && (n < prev.n || snap.uptime_s < prev.up)) { samples = []; rates = []; prev = null; }
    if (prev && now > prev.t) {
      rates.push((n - prev.n) * 1000 / (now - prev.t));
      if (rates.length > SPARK_POINTS) rates.shift();
    }
    samples.push({t: now, n: n, up: snap.uptime_s});
    while (samples.length > 2 && now - samples[0].t > WINDOW_MS) samples.shift();
    var first = samples[0];
    // The page's own monotonic clock measures the interval; the gateway's wall clock may jump.
    setText("req-rate", samples.length > 1 && now > first.t ? fmtNum((n - first.n) * 1000 / (now - first.t), 2) : "\\u2014");
    setText("req-rate-avg", snap.uptime_s > 0 ? fmtNum(n / snap.uptime_s, 2) : "\\u2014");
    var pts = [], max = Math.max.apply(null, rates.concat([0.001]));
    rates.forEach(function (r, i) {
      var x = rates.length > 1 ? (i * 100 / (rates.length - 1)) : 100;
      pts.push(x.toFixed(2) + "," + (29 - (r / max) * 27).toFixed(2));
    });
    $("spark-line").setAttribute("points", pts.join(" "));
  }

  function renderProcess(p) {
    if (!p) return;
    var now = performance.now();
    // CPU share of one core since the last poll; another process answering (a restart or
    // another worker) starts over.
    if (cpuPrev && cpuPrev.start === p.start_time && now > cpuPrev.t && p.cpu_seconds >= cpuPrev.cpu) {
      setText("process-cpu", fmtNum((p.cpu_seconds - cpuPrev.cpu) * 100000 / (now - cpuPrev.t), 1));
    }
    cpuPrev = {t: now, cpu: p.cpu_seconds, start: p.start_time};
    setText("process-rss", fmtNum(p.resident_memory_bytes / 1048576, 1));
    setText("process-vms", fmtNum(p.virtual_memory_bytes / 1048576, 0));
    setText("process-fds", fmtInt(p.open_fds));
    setText("process-max-fds", fmtInt(p.max_fds));
  }

  function render(snap) {
    renderRate(snap);
    renderProcess(snap.process);
    setText("updated", fmtTime(snap.time));
    setText("uptime", fmtDur(snap.uptime_s));
    setText("requests-total", fmtInt(snap.requests_total));
    var cl = snap.cluster;
    $("cluster").hidden = !cl;
    if (cl) {
      setText("cluster-requests", fmtInt(cl.requests_total));
      setText("cluster-tokens", fmtInt((cl.tokens_total.prompt || 0) + (cl.tokens_total.completion || 0)));
    }

    var byStatus = snap.by_status || {}, classes = {"2xx": 0, "4xx": 0, "5xx": 0}, rows = [];
    Object.keys(byStatus).sort().forEach(function (code) {
      var c = String(code).charAt(0) + "xx";
      if (c in classes) classes[c] += byStatus[code];
      var tr = el("tr");
      tr.appendChild(el("td", code, "st" + String(code).charAt(0)));
      tr.appendChild(el("td", fmtInt(byStatus[code]), "num", "status-" + safeId(code)));
      rows.push(tr);
    });
    fill($("status-table"), rows, 2, "no requests yet");
    Object.keys(classes).forEach(function (c) { setText("status-class-" + c, fmtInt(classes[c])); });

    var byProv = snap.by_provider || {};
    fill($("provider-table"), Object.keys(byProv).sort().map(function (p) {
      var tr = el("tr");
      tr.appendChild(el("td", p));
      tr.appendChild(el("td", fmtInt(byProv[p]), "num", "provider-requests-" + safeId(p)));
      return tr;
    }), 2, "none yet");

    var lat = snap.latency_ms || {}, ovh = snap.overhead_ms || {};
    setText("latency-p50", fmtNum(lat.p50)); setText("latency-p99", fmtNum(lat.p99));
    setText("latency-mean", fmtNum(lat.mean));
    setText("overhead-p50", fmtNum(ovh.p50)); setText("overhead-p99", fmtNum(ovh.p99));

    var tt = snap.tokens_total || {}, tp = tt.prompt || 0, tc = tt.completion || 0;
    setText("tokens-prompt", fmtInt(tp)); setText("tokens-completion", fmtInt(tc)); setText("tokens-total", fmtInt(tp + tc));
    var tokens = snap.tokens || {};
    fill($("tokens-table"), Object.keys(tokens).sort().map(function (name) {
      var t = tokens[name] || {}, p = t.prompt || 0, c = t.completion || 0, tr = el("tr");
      tr.appendChild(el("td", name, "mono"));
      tr.appendChild(el("td", fmtInt(p), "num", "tokens-" + safeId(name) + "-prompt"));
      tr.appendChild(el("td", fmtInt(c), "num", "tokens-" + safeId(name) + "-completion"));
      tr.appendChild(el("td", fmtInt(p + c), "num"));
      return tr;
    }), 4, "no usage reported yet");

    setText("open-connections", fmtInt(snap.open_connections));
    setText("active-streams", fmtInt(snap.active_streams));
    setText("failovers", fmtInt(snap.failovers));
    setText("rate-limited", fmtInt(snap.rate_limited));
    var cache = snap.cache || {};
    setText("cache-hit", fmtInt(cache.hit || 0)); setText("cache-miss", fmtInt(cache.miss || 0));

    var provs = snap.providers || {}, krows = [];
    Object.keys(provs).forEach(function (name) {
      var p = provs[name] || {}, keys = p.keys || [], sid = safeId(name);
      if (!keys.length) keys = [null];
      keys.forEach(function (k, i) {
        var tr = el("tr");
        if (i === 0) {
          var tdn = el("td", name); tdn.rowSpan = keys.length; tr.appendChild(tdn);
          var tdt = el("td", p.type); tdt.rowSpan = keys.length; tr.appendChild(tdt);
          var tdb = el("td", p.breaker || "\\u2014", "state " + safeId(p.breaker || ""), "breaker-" + sid);
          tdb.rowSpan = keys.length; tr.appendChild(tdb);
        }
        if (!k) {
          var none = el("td", "no keys", "empty"); none.colSpan = 6; tr.appendChild(none);
        } else {
          tr.appendChild(el("td", k.key, "mono", "key-" + sid + "-" + i));
          tr.appendChild(el("td", k.state, "state " + safeId(k.state || ""), "key-state-" + sid + "-" + i));
          tr.appendChild(el("td", typeof k.cooldown_s === "number" ? fmtDur(Math.ceil(k.cooldown_s)) : "", "num", "key-cooldown-" + sid + "-" + i));
          tr.appendChild(el("td", fmtInt(k.requests), "num", "key-requests-" + sid + "-" + i));
          tr.appendChild(el("td", fmtInt(k.failures), "num", "key-failures-" + sid + "-" + i));
          tr.appendChild(el("td", fmtInt(k.rate_limited), "num"));
        }
        krows.push(tr);
      });
    });
    fill($("keys"), krows, 9, "no providers");

    var errs = (snap.recent_errors || []).slice().reverse();
    fill($("errors"), errs.map(function (e) {
      var tr = el("tr", null, "error-row"), st = e.status;
      tr.appendChild(el("td", fmtTime(e.time), "mono"));
      tr.appendChild(el("td", st === null || st === undefined ? "attempt" : String(st), st ? "st" + String(st).charAt(0) : ""));
      tr.appendChild(el("td", e.provider || "\\u2014"));
      tr.appendChild(el("td", e.request_id || "", "mono"));
      tr.appendChild(el("td", e.message || "", "msg"));
      return tr;
    }), 5, "no errors");
  }

  // ---- sign-in with GitHub, when the gateway has it (auth/me is 404 otherwise) ----
  var probed = false;
  function offerSignIn() {
    if (probed) return;
    probed = true;
    fetch("auth/me", {cache: "no-store", credentials: "same-origin"}).then(function (r) {
      if (r.status === 404) return;
      var a = $("signin-github");
      a.setAttribute("href", "auth/github/login?next=/dashboard");
      a.className = "button show";
    }).catch(function () {});
  }

  // ---- polling ----
  function tick() {
    if (busy) return;
    busy = true;
    var key = getKey(), headers = {Accept: "application/json"};
    if (key) headers.Authorization = "Bearer " + key;
    fetch("metrics.json", {headers: headers, cache: "no-store", credentials: "same-origin"})
      .then(function (r) {
        if (r.status === 401 || r.status === 403) {
          $("keybox").className = "show";
          offerSignIn();
          $("keymsg").textContent = key
            ? "The gateway refused this key (HTTP " + r.status + "). Enter another one."
            : "This gateway needs a key for /metrics.json. It is kept in this tab only (sessionStorage).";
          status("needs key", "bad");
          return null;
        }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (snap) {
        if (!snap) return;
        $("keybox").className = "";
        render(snap);
        lastOk = Date.now();
        status("live", "live");
      })
      .catch(function (err) {
        status(lastOk ? "stale" : "unreachable", lastOk ? "stale" : "bad");
        if (window.console) console.warn("rawgw dashboard:", err);
      })
      .then(function () { busy = false; });
  }
  tick();
  setInterval(tick, POLL_MS);
})();
</script>
</body>
</html>
"""
