#!/usr/bin/env bash
# Install the bench peers and tools (never needed by rawgw itself):
#   nginx-light  plain reverse proxy peer          (apt)
#   wrk          optional C load client (--client wrk)   (apt)
#   fastapi + uvicorn[standard] + httpx  the Python pass-through peer (pip; the `bench` extra)
#   py-spy       sampling profiler for the gateway (pip; optional)
# Usage: bash bench/install_peers.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq nginx-light wrk
  # The package may start a system nginx on port 80; the bench runs its own, so stop it.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true; fi
else
  echo "install_peers: no apt-get here; install nginx and wrk with your package manager" >&2
fi
# The same list as pyproject's `bench` extra (pip install -e ".[bench]").
python -m pip install -q "fastapi>=0.110" "uvicorn[standard]>=0.29" "httpx>=0.27" "py-spy>=0.3"
python - <<'PY'
import importlib.util, shutil
for m in ("fastapi", "uvicorn", "httpx", "httptools", "uvloop"):
    print(f"{m:10s} {'ok' if importlib.util.find_spec(m) else 'missing'}")
for exe in ("nginx", "wrk", "py-spy"):
    print(f"{exe:10s} {shutil.which(exe) or shutil.which('/usr/sbin/' + exe) or 'missing'}")
PY
