"""Token usage picked out of the end of a response body, without parsing the stream.

OpenAI puts ``usage`` in the last JSON object (plain) or the last data event
before ``[DONE]`` (streams with include_usage); Anthropic in its final
``message_delta`` (output) and ``message_start`` / body ``usage`` (input). The
relay keeps references to the last few body pieces; this module looks only at
those bytes, once, when the response ends.
"""

from __future__ import annotations

import re

import orjson

USAGE = b'"usage"'
FAST_TRIES = 4  # closing braces tried before the token scanner: usage nests 1-2 levels


# Strings (escapes respected) and braces: the regex engine skips everything else, so
# the Python loop runs per token, not per byte.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}]', re.S)


def _usage_at(data: bytes, start: int) -> object:
    """The JSON value of the object at ``data[start] == '{'``, or None.

    A JSON object ends where its own text says, so a slice from ``start`` that parses
    is that object: try the first ``}`` at which the braces balance (one C-level
    ``find``/``count`` each, at most FAST_TRIES of them; a usage object is flat or
    nested a level or two), and scan tokens only when that fails (a brace inside a
    string, deeper nesting).
    """
    end = data.find(b"}", start)
    for _ in range(FAST_TRIES):  # bounded: braces inside strings would make it quadratic
        if end < 0:
            break
        piece = data[start : end + 1]
        if piece.count(b"{") == piece.count(b"}"):
            try:
                return orjson.loads(piece)
            except orjson.JSONDecodeError:
                break
        end = data.find(b"}", end + 1)
    obj = _object_at(data, start)
    if obj is None:
        return None
    try:
        return orjson.loads(obj)
    except orjson.JSONDecodeError:
        return None


def _object_at(data: bytes, start: int) -> bytes | None:
    """The balanced JSON object starting at ``data[start] == '{'`` (strings respected)."""
    depth = 0
    for m in _TOKENS.finditer(data, start):
        c = data[m.start()]
        if c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return data[start : m.end()]
    return None


def extract_usage(tail: bytes) -> tuple[int, int] | None:
    """(prompt/input tokens, completion/output tokens) from the last usage object, if any."""
    pos = len(tail)
    prompt = completion = None
    while True:
        pos = tail.rfind(USAGE, 0, pos)
        if pos < 0:
            break
        brace = tail.find(b"{", pos + len(USAGE))
        if brace < 0 or tail[pos + len(USAGE) : brace].strip(b" \t\r\n:") != b"":
            continue
        usage = _usage_at(tail, brace)
        if not isinstance(usage, dict):
            continue
        p = usage.get("prompt_tokens", usage.get("input_tokens"))
        c = usage.get("completion_tokens", usage.get("output_tokens"))
        if completion is None and isinstance(c, int):
            completion = c
        if prompt is None and isinstance(p, int) and (p or "prompt_tokens" in usage):
            prompt = p
        if prompt is not None and completion is not None:
            break
    if prompt is None and completion is None:
        return None
    return prompt or 0, completion or 0
