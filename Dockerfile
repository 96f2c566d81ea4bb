# rawgw in a container. Build: docker build -t rawgw .
# Run:   docker run -p 8080:8080 -v $PWD/gateway.toml:/etc/rawgw/gateway.toml:ro \
#          -e OPENROUTER_API_KEY -e GATEWAY_API_KEY rawgw
# The config is mounted at /etc/rawgw/gateway.toml; secrets come in as environment
# variables named "env:NAME" in it. rawgw is PID 1 (exec-form ENTRYPOINT, no shell), so
# `docker stop` delivers SIGTERM to it and the drain of shutdown_grace_s runs; give
# `docker stop -t` (compose: stop_grace_period) more than that. Logs: /var/lib/rawgw/logs.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /tmp/src/
COPY rawgw /tmp/src/rawgw
RUN pip install /tmp/src && rm -rf /tmp/src

# A fixed non-root uid, so a mounted config only needs to be readable by 10001 (or anyone).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/rawgw --shell /usr/sbin/nologin rawgw \
    && mkdir -p /etc/rawgw /var/lib/rawgw/logs \
    && chown -R rawgw:rawgw /var/lib/rawgw
WORKDIR /var/lib/rawgw
USER rawgw

ENV RAWGW_CONFIG=/etc/rawgw/gateway.toml
EXPOSE 8080
STOPSIGNAL SIGTERM
# The stdlib only (no curl in slim images), straight to loopback (no proxy variables).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client as h; c = h.HTTPConnection('127.0.0.1', 8080, timeout=4); c.request('GET', '/health'); raise SystemExit(c.getresponse().status != 200)"]
ENTRYPOINT ["rawgw"]
# --host/--port here win over the config's [server] host/port: the container always
# listens on every interface at 8080, where EXPOSE and HEALTHCHECK expect it.
CMD ["serve", "-c", "/etc/rawgw/gateway.toml", "--host", "0.0.0.0", "--port", "8080"]
