# The service alone, for Ozone's compose file or any container runtime: `run` by default, with
# its HTTP surface (/health, /ready, /metrics) on port 8090 and JSON logs on stdout.
# Build: docker build -t orthanc-openmrs .   (behind a TLS-intercepting proxy, mount its CA
# bundle and pass --build-arg PIP_CERT=/path/inside/the/build, which pip reads.)
FROM debian:bookworm-slim AS build
ARG PIP_CERT
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The dependencies first, from the versions kept in the repository (scripts/lock): this layer
# stays cached until constraints.txt changes.
COPY constraints.txt /src/constraints.txt
RUN python3 -m venv /opt/orthanc-openmrs \
    && /opt/orthanc-openmrs/bin/pip install --no-cache-dir --disable-pip-version-check \
        -c /src/constraints.txt -r /src/constraints.txt
# The service itself. .dockerignore leaves the test tooling (devtools, tests, bench) out of the
# build context, so the wheel built here cannot contain it.
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/orthanc-openmrs/bin/pip install --no-cache-dir --disable-pip-version-check \
        --no-deps --no-build-isolation /src \
    && /opt/orthanc-openmrs/bin/pip uninstall --yes --quiet setuptools wheel pip

FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --system --user-group --uid 10001 --home-dir /var/lib/orthanc-openmrs \
        --shell /usr/sbin/nologin orthanc-openmrs \
    && install -d -m 0700 -o orthanc-openmrs -g orthanc-openmrs /var/lib/orthanc-openmrs
COPY --from=build /opt/orthanc-openmrs /opt/orthanc-openmrs
ENV PATH=/opt/orthanc-openmrs/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    SYNC_DATABASE=/var/lib/orthanc-openmrs/ledger.sqlite3 \
    SYNC_HTTP_ADDRESS=0.0.0.0 \
    SYNC_HTTP_PORT=8090 \
    SYNC_LOG_FORMAT=json
USER orthanc-openmrs
WORKDIR /var/lib/orthanc-openmrs
VOLUME /var/lib/orthanc-openmrs
EXPOSE 8090
# Liveness only (the loop is turning), never the servers: an outage must not restart the
# container. No curl in the image; the service's own Python asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SYNC_HTTP_PORT', '8090') + '/health', timeout=4)"]
ENTRYPOINT ["orthanc-openmrs"]
CMD ["run"]
