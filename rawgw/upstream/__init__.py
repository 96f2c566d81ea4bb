"""The provider leg: h11 CLIENT connections, pools per origin, TLS, CONNECT proxies."""
