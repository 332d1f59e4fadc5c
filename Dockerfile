# sse-bridge: the polling-to-SSE sidecar.
#   docker build -t sse-bridge .
#   docker run -p 8080:8080 -e BRIDGE_UPSTREAM_URL=http://legacy:9000 sse-bridge
# The demo (a simulated legacy API and the dashboard, nothing to configure) listens on
# 127.0.0.1 unless told otherwise, and inside a container that is out of reach of any
# published port; give it --host 0.0.0.0, then open http://127.0.0.1:8080/:
#   docker run --rm -p 8080:8080 sse-bridge demo --host 0.0.0.0
# Kubernetes: deploy/kubernetes; everything about running it: docs/deploy.md.
# tests/test_deploy.py checks this file's instructions and runs the HEALTHCHECK command
# against a served bridge; tests/test_image.py builds this file with podman and runs the
# image (docs/deploy.md, "How the image is tested").

# The locks are compiled for CPython 3.11 on Linux (scripts/lock): keep this at 3.11.
# Two stages: the build stage installs into prefixes of its own, and the image takes only
# what was installed, not the sources, pip's build tree (/src/build, egg-info) or the
# build backend. The two prefixes are two layers: a code change rebuilds and ships the
# package's ~2 MB, not the dependencies' ~55 MB.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The locked, hash-checked dependencies first (a layer that survives code changes), then the
# package without deps so that nothing outside the lock gets in.
COPY requirements.lock ./
RUN pip install --prefix=/opt/deps --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY bridge ./bridge
RUN pip install --prefix=/opt/bridge --no-deps .

FROM python:3.11-slim
# Bytecode: pip compiled it at install (the build stage); nothing is written at run time,
# and the root filesystem may be read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The same path as in the build stage's python (/usr/local), which the sse-bridge script's
# #! line names.
COPY --from=build /opt/deps /usr/local
COPY --from=build /opt/bridge /usr/local
# A fixed uid and gid, so that Kubernetes' runAsNonRoot can check them and the manifests'
# runAsUser/runAsGroup (deploy/kubernetes) name the same user. (useradd warns that 10001 is
# above SYS_UID_MAX: expected, a system account outside the range the host's users get.)
RUN groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin bridge

USER 10001:10001
EXPOSE 8080
# SIGTERM drains: /readyz 503, streams end cleanly over BRIDGE_DRAIN_SPREAD, exit within
# BRIDGE_SHUTDOWN_GRACE (docs/deploy.md, "Rolling updates").
STOPSIGNAL SIGTERM
# Liveness of this process, wherever BRIDGE_PORT (and BRIDGE_HOST) put its listener, over
# HTTPS when BRIDGE_TLS_CERTFILE is set. The certificate is not verified: it names the
# public host, not 127.0.0.1, and this only asks whether the process answers. Any failure
# (refused, timeout, non-2xx) is an exception, so exit 1: Docker's "unhealthy".
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, ssl, urllib.request as r; e = os.environ.get; h = e('BRIDGE_HOST') or '0.0.0.0'; h = {'0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h); c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; r.urlopen(('https' if e('BRIDGE_TLS_CERTFILE') else 'http') + '://' + ('[' + h + ']' if ':' in h else h) + ':' + (e('BRIDGE_PORT') or '8080') + '/healthz', timeout=2, context=c)"]
ENTRYPOINT ["sse-bridge"]
CMD ["serve"]
