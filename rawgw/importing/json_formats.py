"""The JSON inputs: the FastAPI gateway's provider mapping, the Go router's keys.json
and the priority router's llm_router_config.json."""

from __future__ import annotations

from typing import Any

from rawgw.config import mask_key
from rawgw.importing.merge import ImportFailed, Merge, env_token
from rawgw.importing.presets import known_provider, unknown_provider_fix


def import_provider_mapping(entries: list[Any], merge: Merge) -> str:
    """``[{"model": M, "providers": [P...]}]`` → one route per model (its providers are
    chosen by :func:`rawgw.importing.run.finish`, once every input is known)."""
    added = 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ImportFailed(f"entry {i}: must be an object with model and providers")
        model, order = entry.get("model"), entry.get("providers", [])
        if not isinstance(model, str) or not model:
            raise ImportFailed(f"entry {i}: model must be a non-empty string")
        if not isinstance(order, list) or not all(isinstance(p, str) for p in order):
            raise ImportFailed(f"entry {i}: providers must be a list of strings")
        if any(r["match"] == model for r in merge.routes):
            merge.notes.append(f"model {model} is mapped twice; the first mapping is kept")
            continue
        merge.routes.append({"match": model, "provider_order": list(order)})
        added += 1
    return f"OpenRouter provider mapping ({added} routes)"


def import_virtual_keys(vkeys: Any, merge: Merge) -> str:
    """``{"virtual_keys": {VK: {"provider", "api_key"}}}`` → a gateway key per virtual key,
    pinned to a provider of that name holding that api_key.

    A virtual key IS a credential (its clients send it as their Bearer token), so it is
    never used as a name: names show in logs, metrics labels and 403 bodies. Keys are
    named ``<provider>_<n>`` and their values go to the export list like every secret.
    Providers are shared only by virtual keys with the same provider and api_key, so a
    pinned key only ever spends its own upstream key.
    """
    if not isinstance(vkeys, dict):
        raise ImportFailed("virtual_keys must be an object of VIRTUAL_KEY: {provider, api_key}")
    per_provider: dict[str, int] = {}
    for index, (vk, entry) in enumerate(vkeys.items()):
        where = f"virtual_keys entry {index + 1}"  # never the key itself: it is a secret
        if not isinstance(entry, dict):
            raise ImportFailed(f"{where}: must be an object with provider and api_key")
        pname, api_key = entry.get("provider"), entry.get("api_key")
        if not isinstance(pname, str) or not pname:
            raise ImportFailed(f"{where}.provider: required, a provider name ({unknown_provider_fix()})")
        preset = known_provider(pname)
        if preset is None:
            raise ImportFailed(f"{where}.provider: unknown provider {pname!r}; {unknown_provider_fix()}")
        ptype, base_url = preset
        pname = pname.strip().lower()
        if not isinstance(api_key, str) or not api_key:
            raise ImportFailed(f"{where}.api_key: must be a non-empty string")
        ignored = sorted(set(entry) - {"provider", "api_key"})
        if ignored:
            merge.notes.append(f"{where}: ignored {', '.join(ignored)} (no rawgw equivalent)")
        ref = merge.secret(api_key, f"RAWGW_{env_token(pname)}_KEY", f"api_key of the {pname} virtual keys")
        provider = next(
            (p for p, t in merge.providers.items() if merge.vk_providers.get(p) == pname and t["keys"] == [ref]),
            None,
        )
        if provider is None:
            provider = merge.unique_provider(pname)
            table: dict[str, Any] = {"type": ptype}
            if base_url != _default_url(ptype):
                table["base_url"] = base_url
            table["keys"] = [ref]
            merge.providers[provider] = table
            merge.vk_providers[provider] = pname
        per_provider[pname] = per_provider.get(pname, 0) + 1
        key_name = merge.unique_key_name(f"{pname}_{per_provider[pname]}")
        var = f"RAWGW_GATEWAY_KEY_{env_token(key_name)}"
        gateway_ref = merge.secret(vk, var, f"virtual key {key_name}: the value its clients already send")
        merge.keys.append({"key": gateway_ref, "name": key_name, "providers": [provider]})
        merge.legend.append(f"gateway key {key_name} = virtual key {mask_key(vk)} ({gateway_ref}), pinned to provider {provider}")
    return f"virtual keys ({len(vkeys)})"


def _default_url(ptype: str) -> str:
    from rawgw.config import DEFAULT_BASE_URLS

    return DEFAULT_BASE_URLS.get(ptype, "")


def is_router_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(e, dict) and "api_key" in e for e in value)


def import_priority_router(doc: dict[str, Any], merge: Merge) -> str:
    """``{NAME: [{"api_key", "priority", "base_url", "timeout", "max_retries"}]}`` → one
    provider per entry, and a group NAME of them, so ``/NAME/chat/completions`` keeps
    trying them by priority as the router did."""
    count = 0
    for pname, entries in doc.items():
        preset = known_provider(pname)
        if preset is None:
            raise ImportFailed(f"{pname}: unknown provider name; {unknown_provider_fix()}")
        ptype, default_url = preset
        members: list[str] = []
        for i, entry in enumerate(entries):
            where = f"{pname}[{i}]"
            name = merge.unique_provider(pname)
            table: dict[str, Any] = {"type": ptype}
            base_url = entry.get("base_url")
            if base_url not in (None, ""):
                if not isinstance(base_url, str):
                    raise ImportFailed(f"{where}.base_url: must be a string")
                table["base_url"] = base_url
                if ptype == "anthropic" and base_url.rstrip("/").endswith("/v1"):
                    merge.notes.append(
                        f"providers.{name}.base_url ends with /v1; rawgw appends /v1/messages to an "
                        "anthropic base_url, so you probably want the bare origin"
                    )
            elif default_url != _default_url(ptype):
                table["base_url"] = default_url
            api_key = entry.get("api_key")
            if not isinstance(api_key, str) or not api_key:
                raise ImportFailed(f"{where}.api_key: must be a non-empty string")
            table["keys"] = [merge.secret(api_key, f"RAWGW_{env_token(name)}_KEY_1", f"{where}.api_key")]
            priority = entry.get("priority", i + 1)
            if not isinstance(priority, int) or isinstance(priority, bool):
                raise ImportFailed(f"{where}.priority: must be an integer")
            table["priority"] = priority
            timeout = entry.get("timeout")
            if timeout is not None:
                if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                    raise ImportFailed(f"{where}.timeout: must be a number of seconds > 0")
                table["read_timeout_s"] = timeout
            retries = entry.get("max_retries")
            if retries is not None:
                if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                    raise ImportFailed(f"{where}.max_retries: must be an integer >= 0")
                table["max_retries"] = retries
            merge.providers[name] = table
            members.append(name)
            count += 1
        if members:
            group = pname.strip().lower()
            if group in merge.groups:
                merge.groups[group].extend(members)
            else:
                merge.groups[group] = members
    names = ", ".join(f"/{g}/..." for g in merge.groups)
    return f"priority router ({count} providers; failover paths {names})"
