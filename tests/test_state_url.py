"""rawgw.state.url: the accepted forms, the masked form, and the errors (pure, no sockets)."""

from __future__ import annotations

import ssl

import pytest

from rawgw.state.url import StateURL, mask_url, parse_state_url


@pytest.mark.parametrize(
    ("url", "expected", "masked"),
    [
        ("redis://localhost", StateURL("redis", host="localhost"), "redis://localhost:6379/0"),
        ("redis://127.0.0.1:7000/3", StateURL("redis", host="127.0.0.1", port=7000, db=3), "redis://127.0.0.1:7000/3"),
        (
            "redis://user:p%40ss%2Fw@h:1234/2",
            StateURL("redis", host="h", port=1234, db=2, username="user", password="p@ss/w"),
            "redis://user:***@h:1234/2",
        ),
        ("rediss://:tok@cache.example:6380", StateURL("rediss", host="cache.example", port=6380, password="tok"), "rediss://:***@cache.example:6380/0"),
        ("redis://[::1]:7000/1", StateURL("redis", host="::1", port=7000, db=1), "redis://[::1]:7000/1"),
        ("unix:///run/redis.sock", StateURL("unix", path="/run/redis.sock"), "unix:///run/redis.sock"),
        ("unix:///tmp/r.sock?db=4", StateURL("unix", path="/tmp/r.sock", db=4), "unix:///tmp/r.sock?db=4"),
        ("unix://u:pw@/tmp/r.sock", StateURL("unix", path="/tmp/r.sock", username="u", password="pw"), "unix://u:***@/tmp/r.sock"),
        ("REDIS://H", StateURL("redis", host="h"), "redis://h:6379/0"),
    ],
)
def test_accepted_forms(url: str, expected: StateURL, masked: str) -> None:
    parsed = parse_state_url(url)
    assert parsed == expected
    assert parsed.masked() == masked
    if parsed.password:
        assert parsed.password not in parsed.masked() and parsed.password not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", "scheme must be one of"),
        ("redis://", "missing host"),
        ("redis://:secretpw@h:99999", "Port out of range"),
        ("redis://:secretpw@h:0", "port must be 1-65535"),
        ("redis://:secretpw@h:abc", "Port could not be cast"),
        ("redis://:secretpw@h/x", "database must be a non-negative integer"),
        ("redis://:secretpw@h/1/2", "path must be a database number"),
        ("redis://:secretpw@h/1?db=2", "give the database as the path"),
        ("redis://:secretpw@h/1?tls=1", "unknown query parameter(s) tls"),
        ("unix://:secretpw@host/run/r.sock", "takes no host"),
        ("unix:run/r.sock", "absolute socket path"),
        ("unix:///r.sock?db=-1", "database must be a non-negative integer"),
    ],
)
def test_bad_urls_name_the_url_masked(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_state_url(url)
    text = str(info.value)
    assert message in text
    assert "secretpw" not in text
    assert text.startswith(f"state url {mask_url(url)!r}")


def test_mask_url_hides_unencoded_at_and_slash_in_password() -> None:
    assert mask_url("redis://u:p@s/s@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"
    assert parse_state_url("redis://u:p@ss@h:1/0").masked() == "redis://u:***@h:1/0"


def test_tls_context_only_for_rediss() -> None:
    assert parse_state_url("redis://h").ssl_context() is None
    ctx = parse_state_url("rediss://h").ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
