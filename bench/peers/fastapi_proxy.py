"""Peer: the pass-through proxy most Python gateways are built on (FastAPI + uvicorn + httpx).

python bench/peers/fastapi_proxy.py --upstream http://127.0.0.1:PORT/v1 [--port 0]
Prints ``fastapi-proxy listening on http://HOST:PORT`` once it accepts connections.
Bench-only: rawgw never imports or installs this (see bench/install_peers.sh).
"""

import argparse
import socket

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
DROP_DOWN = HOP - {"content-length"} | {"date", "server"}  # uvicorn writes its own Date/Server


def make_app(upstream: str, key: str) -> FastAPI:
    app = FastAPI()
    client = httpx.AsyncClient(base_url=upstream, timeout=None, limits=httpx.Limits(max_connections=None, max_keepalive_connections=2048))

    @app.post("/v1/{path:path}")
    async def proxy(path: str, request: Request) -> StreamingResponse:
        headers = [(k, v) for k, v in request.headers.raw if k.decode().lower() not in HOP | {"authorization"}]
        headers.append((b"authorization", f"Bearer {key}".encode()))
        req = client.build_request("POST", "/" + path, headers=headers, content=await request.body())
        resp = await client.send(req, stream=True)
        out = {k: v for k, v in resp.headers.items() if k.lower() not in DROP_DOWN}
        return StreamingResponse(resp.aiter_raw(), status_code=resp.status_code, headers=out, background=BackgroundTask(resp.aclose))

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True)
    p.add_argument("--key", default="sk-bench-upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((a.host, a.port))
    sock.listen(4096)
    loop = "uvloop"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(make_app(a.upstream, a.key), loop=loop, http="auto", access_log=False, log_level="warning", lifespan="off", backlog=4096)
    print(f"fastapi-proxy listening on http://{a.host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
