# syntax=docker/dockerfile:1
# qmp-server in a container: QMP sockets on the /run/qmp volume, REST on 8080 when enabled.
#   docker build -t qmp-server .
#   docker run --rm -v qmp:/run/qmp qmp-server -qmp unix:/run/qmp/qmp.sock,server=on,wait=off
#   docker run --rm -v "$PWD/fleet.toml:/etc/fleet.toml:ro" qmp-server --fleet /etc/fleet.toml
# Two stages: "build" has a C compiler and builds the wheels (qmp-server's with its C fast path,
# and its dependencies'); the final image installs them from that stage, offline, and has no
# compiler.  docs/fleet.md ("The container image") says how this file was checked.

FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY qmp_server ./qmp_server
COPY schema ./schema
COPY scripts/build_wheels.sh ./scripts/
RUN sh scripts/build_wheels.sh /wheels

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 qmp \
 && mkdir -p /run/qmp && chown qmp:qmp /run/qmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels qmp-server \
 && python -c "import qmp_server.engine._pages, qmp_server.wire._qjson"

USER qmp
VOLUME ["/run/qmp"]
EXPOSE 4444 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["qmp-server"]
CMD ["-qmp", "unix:/run/qmp/qmp.sock,server=on,wait=off", "-qmp", "tcp:0.0.0.0:4444,server=on,wait=off"]
