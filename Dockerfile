# The buildsvc daemon in a container (docker-compose.yml runs it privileged: runc/crun and overlayfs
# need mounts and namespaces).
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends runc crun \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what the wheel is built from: the package, its migrations (force-included) and the metadata.
COPY pyproject.toml README.md ./
COPY buildsvc ./buildsvc
COPY migrations ./migrations
RUN pip install --no-cache-dir . && rm -rf /src

WORKDIR /
VOLUME ["/var/lib/buildsvc"]
ENTRYPOINT ["buildsvc"]
CMD ["daemon", "--root", "/var/lib/buildsvc", "--addr", "unix:///run/buildsvc/buildsvcd.sock"]
