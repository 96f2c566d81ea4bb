"""Chat logs: one JSON file per chat exchange, written by the log thread.

Built only when ``[logging].chat`` is on (the relay then keeps the response
body); credentials are masked before anything leaves the event loop; the
oldest files beyond ``chat_file_limit`` are deleted.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from rawgw.config import LoggingConfig, mask_key

SECRET_HEADERS = frozenset({b"authorization", b"x-api-key", b"proxy-authorization", b"cookie"})


def masked_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        text = value.decode("latin-1")
        if name in SECRET_HEADERS:
            scheme, sep, token = text.partition(" ")
            text = f"{scheme} {mask_key(token)}" if sep and scheme.lower() == "bearer" else mask_key(text)
        out[name.decode("latin-1")] = text
    return out


def assembled_text(body: bytes) -> str:
    """The text of an SSE chat stream (OpenAI deltas or Anthropic text deltas)."""
    parts: list[str] = []
    for line in body.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload.startswith(b"{"):
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        for choice in event.get("choices") or []:
            if isinstance(choice, dict):
                delta = choice.get("delta") or {}
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    parts.append(delta["content"])
        delta = event.get("delta")
        if event.get("type") == "content_block_delta" and isinstance(delta, dict) and isinstance(delta.get("text"), str):
            parts.append(delta["text"])
        if event.get("type") == "response.output_text.delta" and isinstance(delta, str):
            parts.append(delta)
    return "".join(parts)


def _json_or_text(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")


def chat_record(
    request_id: str,
    path: str,
    request_headers: list[tuple[bytes, bytes]],
    request_body: bytes,
    status: int,
    response_headers: list[tuple[bytes, bytes]],
    response_body: bytes,
    stream: bool,
    meta: dict[str, Any],
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "time": time.time(),
        "request_id": request_id,
        "path": path,
        **meta,
        "request": {"headers": masked_headers(request_headers), "body": _json_or_text(request_body)},
        "response": {"status": status, "headers": masked_headers(response_headers)},
    }
    if stream:
        record["response"]["body"] = response_body.decode("utf-8", "replace")
        record["response"]["text"] = assembled_text(response_body)
    else:
        record["response"]["body"] = _json_or_text(response_body)
    return record


def write_chat_file(config: LoggingConfig, request_id: str, record: dict[str, Any]) -> None:
    """Runs on the log thread."""
    directory = os.path.join(config.dir, "chat")
    os.makedirs(directory, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(record["time"])) + f"{record['time'] % 1:.6f}"[1:]
    safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in request_id)
    name = f"{stamp}_{safe_id}.json"
    with open(os.path.join(directory, name), "wb") as f:
        f.write(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    files = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    for old in files[: max(0, len(files) - config.chat_file_limit)]:
        try:
            os.remove(os.path.join(directory, old))
        except OSError:
            pass
