"""The control plane (issue 14): admin overlay and API, GitHub sign-in, session cookies,
X-Session-ID tracking, the admin page. Endpoint handlers return ``rawgw.http.reply.Reply``
values; the dispatcher authenticates, routes paths here and writes the replies."""
