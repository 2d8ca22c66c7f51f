# qmp-server in a container: QMP sockets on the /run/qmp volume, REST on 8080 when enabled.
#   docker build -t qmp-server .
#   docker run --rm -v qmp:/run/qmp qmp-server -qmp unix:/run/qmp/qmp.sock,server=on,wait=off
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 qmp \
 && mkdir -p /run/qmp && chown qmp:qmp /run/qmp
WORKDIR /opt/qmp-server
COPY pyproject.toml README.md ./
COPY qmp_server ./qmp_server
COPY schema ./schema
RUN pip install --no-cache-dir .

USER qmp
VOLUME ["/run/qmp"]
EXPOSE 4444 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["qmp-server"]
CMD ["-qmp", "unix:/run/qmp/qmp.sock,server=on,wait=off", "-qmp", "tcp:0.0.0.0:4444,server=on,wait=off"]
