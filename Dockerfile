# sse-bridge: the polling-to-SSE sidecar.
#   docker build -t sse-bridge .
#   docker run -p 8080:8080 -e BRIDGE_UPSTREAM_URL=http://legacy:9000 sse-bridge
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The locked, hash-checked dependencies first (a layer that survives code changes), then the
# package without deps so that nothing outside the lock gets in.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY bridge ./bridge
RUN pip install --no-deps . \
 && useradd --system --uid 10001 --no-create-home bridge

USER 10001
EXPOSE 8080
# SIGTERM drains: /readyz 503, streams end cleanly, exit within BRIDGE_SHUTDOWN_GRACE.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
ENTRYPOINT ["sse-bridge"]
CMD ["serve"]
