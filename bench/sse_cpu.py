"""Gateway CPU µs per SSE event relayed (200 streams × 200 events at 10 ms), 3 runs.

    python bench/sse_cpu.py [SOURCE_TREE]      # default: this checkout
"""

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import BENCH, cpu_s, start, stop, write_config  # noqa: E402
tree = sys.argv[1] if len(sys.argv) > 1 else str(BENCH.parent)
mock, mport = start([sys.executable, str(BENCH / "mock_upstream.py"), "--port", "0"], str(BENCH), 1)
write_config(Path("/tmp/rawgw-sse-cpu.toml"), mport)
gw, port = start([sys.executable, "-m", "rawgw", "serve", "-c", "/tmp/rawgw-sse-cpu.toml", "--log-level", "warning"], tree, 0)
res = []
for rep in range(3):
    c0 = cpu_s(gw.pid)
    out = subprocess.run([sys.executable, str(BENCH / "loadgen.py"), "sse", "--port", str(port), "-s", "200", "--events", "200", "--interval-ms", "10"], capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {1})).stdout
    r = json.loads(out.strip().splitlines()[-1].split("RESULT ", 1)[1])
    res.append((round((cpu_s(gw.pid) - c0) / r["events"] * 1e6, 2), r["delay_p99_ms"], r["exact_pct"]))
stop([gw], mock)
print(tree, "µs/event, p99 ms, exact%:", res)
