"""Node's fetch (undici: the strict parser behind Big-AGI's server) through the gateway.

Skipped where no `node` >= 18 is installed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GW_KEY, StartGateway, base_config
from mock_upstream import Json, MockUpstream, Sse

NODE = shutil.which("node")

SCRIPT = r"""
const [base, key] = process.argv.slice(2);
const h = {'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json'};
const out = {};
let r = await fetch(base + '/v1/chat/completions', {method: 'POST', headers: h,
  body: JSON.stringify({model: 'm', messages: [{role: 'user', content: 'hi'}]})});
out.plain = {status: r.status, body: await r.json(), server: r.headers.get('server')};
r = await fetch(base + '/v1/chat/completions', {method: 'POST', headers: h,
  body: JSON.stringify({model: 'm', stream: true, stream_options: {include_usage: true}, messages: [{role: 'user', content: 'hi'}]})});
let text = ''; const dec = new TextDecoder();
for await (const chunk of r.body) text += dec.decode(chunk, {stream: true});
out.stream = {status: r.status, text, ctype: r.headers.get('content-type')};
r = await fetch(base + '/v1/chat/completions', {method: 'POST', headers: {...h, 'Authorization': 'Bearer nope'}, body: '{}'});
out.unauthorized = {status: r.status, body: await r.json()};
r = await fetch(base + '/v1/chat/completions', {method: 'POST', headers: h, body: '{not json'});
out.bad_json = {status: r.status, body: await r.json()};
console.log(JSON.stringify(out));
"""


def _node_major() -> int:
    if NODE is None:
        return 0
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip().lstrip("v")
    return int(out.split(".")[0]) if out else 0


@pytest.mark.skipif(_node_major() < 18, reason="no node >= 18 (fetch/undici) installed")
async def test_undici_fetch_plain_stream_and_errors(start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    mock_upstream.enqueue(
        Json(body={"id": "c1", "choices": [{"message": {"role": "assistant", "content": "hello"}}]}),
        Sse(pieces=[b'data: {"choices":[{"delta":{"content":"he"}}]}\n\n', b'data: {"choices":[{"delta":{"content":"llo"}}]}\n\n', b"data: [DONE]\n\n"], delay=0.05),
    )
    script = tmp_path / "client.mjs"
    script.write_text(SCRIPT)
    proc = await asyncio.create_subprocess_exec(
        NODE, str(script), gw.url, GW_KEY, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert out["plain"] == {"status": 200, "body": {"id": "c1", "choices": [{"message": {"role": "assistant", "content": "hello"}}]}, "server": "rawgw"}
    assert out["stream"]["status"] == 200 and out["stream"]["ctype"].startswith("text/event-stream")
    assert out["stream"]["text"] == (
        'data: {"choices":[{"delta":{"content":"he"}}]}\n\ndata: {"choices":[{"delta":{"content":"llo"}}]}\n\ndata: [DONE]\n\n'
    )
    assert out["unauthorized"]["status"] == 401 and out["unauthorized"]["body"]["error"]["type"] == "authentication_error"
    assert out["bad_json"]["status"] == 400 and "JSON" in out["bad_json"]["body"]["error"]["message"]
