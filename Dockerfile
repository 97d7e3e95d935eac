# jobwire server image: `docker build -t jobwire:0.1.0 .` (see docs/operations.md, "Container image").
#
# The server listens on 0.0.0.0, so it needs bearer tokens (mount a tokens file and set
# JOBWIRE_TOKENS_FILE) or an explicit JOBWIRE_ALLOW_UNAUTHENTICATED=true; without either it refuses to
# start and says so. The SQLite file lives in the volume /var/lib/jobwire; `--db postgresql://…` (or
# JOBWIRE_DB) uses PostgreSQL instead.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# Build stage: the jobwire wheel and every wheel of its server extra, at the tested versions.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY server ./server
COPY clients/python ./clients/python
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels --constraint constraints.txt "$(echo /wheels/jobwire-*.whl)[server]"

# Runtime stage: the installed wheels and nothing of the build.
FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "$(echo /wheels/jobwire-*.whl)[server]" \
 && groupadd --system --gid 10001 jobwire \
 && useradd --system --uid 10001 --gid jobwire --home-dir /var/lib/jobwire --shell /usr/sbin/nologin jobwire \
 && mkdir -p /var/lib/jobwire /etc/jobwire \
 && chown jobwire:jobwire /var/lib/jobwire

# Every setting is a JOBWIRE_* variable too; these are the container's defaults, and `-e` or flags after
# the image name override them. JOBWIRE_HTTP_LISTEN is the HTTP gateway's address.
ENV PYTHONUNBUFFERED=1 \
    JOBWIRE_LISTEN=0.0.0.0:50051 \
    JOBWIRE_HTTP_LISTEN=0.0.0.0:8080 \
    JOBWIRE_DB=/var/lib/jobwire/jobwire.db \
    JOBWIRE_LOG_FORMAT=json

WORKDIR /var/lib/jobwire
VOLUME ["/var/lib/jobwire"]
USER 10001:10001
# 50051 gRPC, 8080 HTTP gateway, 9464 Prometheus metrics (off until JOBWIRE_METRICS_LISTEN=0.0.0.0:9464).
EXPOSE 50051 8080 9464

# The gRPC health service on loopback (health checks need no token). Kubernetes ignores this and uses
# its own grpc probes (deploy/kubernetes/).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["jobwire", "health"]

# jobwire is PID 1 (exec form) and drains on SIGTERM: give `docker stop` a --time above
# shutdown_grace + cancel_grace + 10 (25 s with the defaults; docker's own default is 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["jobwire"]
CMD ["serve"]
