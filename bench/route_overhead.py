"""Routing overhead: req/s and CPU µs/request through a route that rewrites the body
(model alias + OpenRouter provider.order injection) vs a pass-through (body forwarded as
received), same gateway, same run, interleaved. Usage: python bench/route_overhead.py"""

import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import BENCH, cpu_s, start  # noqa: E402

CFG = "/tmp/rawgw-route-overhead.toml"
mock, mport = start([sys.executable, str(BENCH / "mock_upstream.py"), "--port", "0"], str(BENCH), 1)
open(CFG, "w").write(f'''[server]
port = 0
[[keys]]
key = "bench-key"
name = "bench"
[providers.or]
type = "openrouter"
base_url = "http://127.0.0.1:{mport}/v1"
keys = ["sk-or-v1-bench"]
max_connections = 1024
[[routes]]
match = "gpt-4*"
model = "deepseek/deepseek-chat-v3-0324"
provider_order = ["DeepInfra", "Parasail"]
[logging]
access = false
errors = false
''')
gw, port = start([sys.executable, "-m", "rawgw", "serve", "-c", CFG, "--log-level", "warning"], str(BENCH.parent), 0)
bodies = {"pass-through": '{"model":"m","messages":[{"role":"user","content":"hi"}]}',
          "route+rewrite": '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'}
res = {k: [] for k in bodies}
for rep in range(3):
    for name, body in bodies.items():
        c0 = cpu_s(gw.pid)
        out = subprocess.run([sys.executable, str(BENCH / "loadgen.py"), "rps", "--port", str(port), "-c", "64", "-d", "4", "--warmup", "0", "--body", body], capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {1})).stdout
        r = json.loads(out.strip().splitlines()[-1].split("RESULT ", 1)[1])
        res[name].append((round((cpu_s(gw.pid) - c0) / r["requests"] * 1e6, 1), round(r["rps"]), r.get("errors")))
gw.send_signal(signal.SIGTERM); mock.terminate()
for name, runs in res.items():
    us = sorted(x[0] for x in runs); rps = sorted(x[1] for x in runs)
    print(f"{name:14s} CPU µs/req median {us[1]:6.1f}  req/s median {rps[1]:6d}  runs {runs}")
