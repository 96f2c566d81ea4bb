"""The /admin page: one self-contained HTML document (no CDN, no external asset).

Wiring: ``GET /admin`` -> ``Reply(200, PAGE, b"text/html; charset=utf-8")``, served without
a principal (the page holds no data; everything comes from ``/admin/...`` with the
caller's credential). Sign-in screen: a "Sign in with GitHub" link (``/auth/github/login``,
shown when ``/auth/me`` does not answer 404) or an admin key pasted into a field and kept in
``sessionStorage`` (gone with the tab), sent as ``Authorization: Bearer``. With a cookie
session, writes carry ``X-CSRF-Token`` from ``/auth/me`` (rawgw.control.cookies rule 3).
Every value is inserted with ``textContent``; nothing from the API is parsed as HTML.

Element ids (for the Chromium test the lead adds): ``signin``, ``admin-key``,
``signin-key``, ``signin-github``, ``main``, ``who``, ``routes`` (tbody), ``keys`` (tbody),
``providers`` (tbody), ``usage`` (tbody: by, name, requests, prompt/completion tokens, tokens), ``route-form`` (fields ``route-match``, ``route-model``,
``route-providers``), ``key-form`` (``key-name``, ``key-providers``, ``key-models``,
``key-rpm``, ``key-admin``), ``new-secret`` (the one-time secret), ``clear-cache``,
``reload``, ``message``; buttons ``del-route-<i>``, ``del-key-<name>``, ``enable-<provider>-<i>``.
"""

PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>rawgw admin</title>
<style>
:root { color-scheme: light dark; --bg:#f6f7f9; --panel:#fff; --fg:#1d2430; --muted:#6a7382; --line:#e2e6ec; --bad:#c0392b; --ok:#1f8a4c; --accent:#2f6fdb; }
@media (prefers-color-scheme: dark) { :root { --bg:#14171c; --panel:#1c2027; --fg:#e3e7ee; --muted:#8c95a3; --line:#2c323c; --bad:#ef6b5b; --ok:#3fb96f; --accent:#6b9cf0; } }
* { box-sizing: border-box; }
[hidden] { display:none !important; } /* the display rules below must not show hidden panels */
body { margin:0; background:var(--bg); color:var(--fg); font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
header { display:flex; gap:14px; align-items:center; padding:12px 20px; border-bottom:1px solid var(--line); background:var(--panel); }
header h1 { font-size:18px; margin:0; } header .spacer { flex:1; } .muted { color:var(--muted); }
main, #signin { padding:16px 20px; display:grid; gap:16px; max-width:1200px; }
section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:12px 16px; }
h2 { font-size:14px; margin:0 0 8px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
table { width:100%; border-collapse:collapse; } td, th { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line); font-variant-numeric:tabular-nums; }
input { font:inherit; padding:4px 6px; border:1px solid var(--line); border-radius:4px; background:var(--bg); color:var(--fg); }
button, a.button { font:inherit; padding:4px 10px; border-radius:4px; border:1px solid var(--accent); background:var(--accent); color:#fff; cursor:pointer; text-decoration:none; }
button.quiet { background:transparent; color:var(--accent); }
#message { min-height:1.4em; } .bad { color:var(--bad); } .ok { color:var(--ok); }
code { word-break:break-all; }
</style>
</head>
<body>
<header><h1>rawgw admin</h1><span class="spacer"></span><span id="who" class="muted"></span>
<button id="reload" class="quiet" hidden>Reload config</button><button id="clear-cache" class="quiet" hidden>Clear cache</button>
<button id="signout" class="quiet" hidden>Sign out</button></header>
<div id="signin">
 <section><h2>Sign in</h2>
  <p><a id="signin-github" class="button" href="/auth/github/login" hidden>Sign in with GitHub</a></p>
  <form id="key-signin"><label><span id="key-label">Admin key</span> <input id="admin-key" type="password" autocomplete="off" size="40"></label>
  <button id="signin-key">Use key</button></form>
  <p class="muted">The key stays in this tab (sessionStorage) and is sent as a Bearer token.</p>
 </section>
</div>
<main id="main" hidden>
 <div id="message"></div>
 <section><h2>Routes</h2><table><thead><tr><th>match</th><th>model</th><th>providers</th><th>origin</th><th></th></tr></thead><tbody id="routes"></tbody></table>
  <form id="route-form"><input id="route-match" placeholder="match (alias or glob)" required> <input id="route-model" placeholder="model (optional)">
  <input id="route-providers" placeholder="providers, comma separated"> <button>Add route</button></form></section>
 <section><h2>Keys</h2><table><thead><tr><th>name</th><th>key</th><th>admin</th><th>providers</th><th>models</th><th>rpm</th><th>requests</th><th>tokens</th><th></th></tr></thead><tbody id="keys"></tbody></table>
  <form id="key-form"><input id="key-name" placeholder="name" required> <input id="key-providers" placeholder="providers"> <input id="key-models" placeholder="models">
  <input id="key-rpm" type="number" min="0" value="0" style="width:6em"> <label><input id="key-admin" type="checkbox"> admin</label> <button>Create key</button></form>
  <p id="new-secret" hidden></p></section>
 <section><h2>Providers</h2><table><thead><tr><th>provider</th><th>key</th><th>state</th><th>requests</th><th>failures</th><th></th></tr></thead><tbody id="providers"></tbody></table></section>
 <section><h2>Usage (last hour)</h2><table><thead><tr><th>by</th><th>name</th><th>requests</th><th>prompt tokens</th><th>completion tokens</th><th>tokens</th></tr></thead><tbody id="usage"></tbody></table></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let csrf = null;
function key() { return sessionStorage.getItem("rawgw-admin-key"); }
async function api(method, path, body) {
  const headers = {};
  if (key()) headers["Authorization"] = "Bearer " + key();
  if (csrf) headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body)});
  let doc = null; try { doc = await r.json(); } catch (e) { doc = null; }
  if (!r.ok) { const err = new Error(doc && doc.error ? doc.error.message : ("HTTP " + r.status)); err.status = r.status; throw err; }
  return doc;
}
function say(text, bad) { const m = $("message"); m.textContent = text; m.className = bad ? "bad" : "ok"; }
function cell(tr, text) { const td = document.createElement("td"); td.textContent = text == null ? "\\u2014" : String(text); tr.appendChild(td); return td; }
function button(td, id, label, fn) { const b = document.createElement("button"); b.className = "quiet"; b.id = id; b.textContent = label; b.onclick = fn; td.appendChild(b); }
function list(text) { return text.split(",").map((s) => s.trim()).filter((s) => s); }
async function act(fn, done) { try { await fn(); if (done) say(done); await refresh(); } catch (e) { say(e.message, true); } }
async function refresh() {
  const [routes, keys, providers, usage] = await Promise.all([api("GET", "/admin/routes"), api("GET", "/admin/keys"), api("GET", "/admin/providers"), api("GET", "/admin/usage?window=hour")]);
  const rt = $("routes"); rt.replaceChildren();
  routes.routes.forEach((r, i) => { const tr = document.createElement("tr"); cell(tr, r.match); cell(tr, r.model); cell(tr, r.providers.join(", ")); cell(tr, r.origin);
    button(cell(tr, ""), "del-route-" + i, "Remove", () => act(() => api("DELETE", "/admin/routes/" + encodeURIComponent(r.match)), "route removed")); rt.appendChild(tr); });
  const perKey = (usage && usage.keys) || {};
  const kt = $("keys"); kt.replaceChildren();
  keys.keys.forEach((k) => { const tr = document.createElement("tr"); const u = perKey[k.name] || {};
    cell(tr, k.name); cell(tr, k.key); cell(tr, k.admin ? "yes" : ""); cell(tr, k.providers.join(", ")); cell(tr, k.models.join(", ")); cell(tr, k.rate_limit_rpm || "");
    cell(tr, u.requests); cell(tr, u.tokens);
    button(cell(tr, ""), "del-key-" + k.name, "Revoke", () => act(() => api("DELETE", "/admin/keys/" + encodeURIComponent(k.name)), "key revoked")); kt.appendChild(tr); });
  const pt = $("providers"); pt.replaceChildren();
  Object.entries(providers.providers || {}).forEach(([name, p]) => (p.keys || []).forEach((k, i) => { const tr = document.createElement("tr");
    cell(tr, name); cell(tr, k.key); cell(tr, k.state); cell(tr, k.requests); cell(tr, k.failures); const td = cell(tr, "");
    if (k.state !== "active") button(td, "enable-" + name + "-" + i, "Re-enable", () => act(() => api("POST", "/admin/providers/" + encodeURIComponent(name) + "/keys/" + i + "/enable"), "key re-enabled"));
    pt.appendChild(tr); }));
  const ut = $("usage"); ut.replaceChildren();
  [["keys", "key"], ["providers", "provider"], ["models", "model"]].forEach(([section, label]) =>
    Object.entries((usage && usage[section]) || {}).forEach(([name, u]) => { const tr = document.createElement("tr");
      cell(tr, label); cell(tr, name); cell(tr, u.requests); cell(tr, u.prompt_tokens); cell(tr, u.completion_tokens); cell(tr, u.tokens); ut.appendChild(tr); }));
  if (!ut.children.length) { const tr = document.createElement("tr"); cell(tr, "no traffic in the last hour").colSpan = 6; ut.appendChild(tr); }
}
async function enter(who) {
  $("who").textContent = who; $("signin").hidden = true; $("main").hidden = false;
  ["reload", "clear-cache", "signout"].forEach((id) => { $(id).hidden = false; });
  try { await refresh(); } catch (e) { say(e.message, true); if (e.status === 401 || e.status === 403) signout(); }
}
function signout() {
  sessionStorage.removeItem("rawgw-admin-key");
  if (csrf) fetch("/auth/logout", {method: "POST", headers: {"X-CSRF-Token": csrf}, credentials: "same-origin"});
  csrf = null; $("main").hidden = true; $("signin").hidden = false; $("who").textContent = "";
}
$("key-signin").onsubmit = (ev) => { ev.preventDefault(); sessionStorage.setItem("rawgw-admin-key", $("admin-key").value.trim()); $("admin-key").value = ""; enter("admin key"); };
$("signout").onclick = signout;
$("reload").onclick = () => act(() => api("POST", "/admin/reload"), "config reloaded");
$("clear-cache").onclick = () => act(async () => { const d = await api("POST", "/admin/cache/clear"); say("cleared " + d.cleared); });
$("route-form").onsubmit = (ev) => { ev.preventDefault(); const body = {match: $("route-match").value.trim(), providers: list($("route-providers").value)};
  if ($("route-model").value.trim()) body.model = $("route-model").value.trim(); act(async () => { await api("POST", "/admin/routes", body); $("route-form").reset(); }, "route added"); };
$("key-form").onsubmit = (ev) => { ev.preventDefault();
  const body = {name: $("key-name").value.trim(), providers: list($("key-providers").value), models: list($("key-models").value), rate_limit_rpm: Number($("key-rpm").value || 0), admin: $("key-admin").checked};
  act(async () => { const d = await api("POST", "/admin/keys", body); const p = $("new-secret"); p.hidden = false; p.replaceChildren();
    p.append("New key (shown once, copy it now): "); const c = document.createElement("code"); c.textContent = d.secret; p.appendChild(c); }); };
(async () => {
  if (key()) return enter("admin key");
  try { const r = await fetch("/auth/me", {credentials: "same-origin"});
    if (r.status !== 404) { $("signin-github").hidden = false; $("key-label").textContent = "or an admin key"; }
    if (r.ok) { const me = await r.json(); csrf = me.csrf_token; if (me.admin) return enter("GitHub: " + me.login); say(me.login + " is not an admin", true); }
  } catch (e) { /* offline */ }
})();
</script>
</body>
</html>
"""
