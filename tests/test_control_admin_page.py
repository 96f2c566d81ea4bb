"""rawgw.control.admin_page: self-contained (no external URL), uses only the admin API,
no HTML injection sinks, the ids the browser test relies on."""

from __future__ import annotations

import re

from rawgw.control.admin_page import PAGE


def test_page_is_self_contained_and_safe() -> None:
    text = PAGE.decode()
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # no CDN, no external asset
    assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "eval(" not in text
    for path in ("/admin/routes", "/admin/keys", "/admin/providers", "/admin/usage", "/admin/reload", "/admin/cache/clear", "/auth/me", "/auth/github/login"):
        assert path in text, path
    assert "sessionStorage" in text and "localStorage" not in text
    assert "X-CSRF-Token" in text
    for ident in ("signin", "admin-key", "main", "routes", "keys", "providers", "route-form", "key-form", "new-secret", "clear-cache", "reload"):
        assert f'id="{ident}"' in text, ident
