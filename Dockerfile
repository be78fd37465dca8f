# syntax=docker/dockerfile:1
# tablesnap, tableslurp and tablechop in one small image, for running tablesnap as a
# sidecar of a Cassandra pod (see packaging/kubernetes/). Build from the repository root:
#
#   docker build -t tablesnap:0.2.0 .
#   docker build --build-arg TABLESNAP_UID=1000 -t tablesnap:0.2.0 .   # another data-volume owner
#
# Both stages are Debian bookworm, so the binaries run against the glibc they were linked with.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# --locked: build exactly the Cargo.lock the tests ran against. The cache mounts keep the
# registry and target/ between builds (BuildKit); target/ is a cache, so the binaries are
# copied out of it in the same step. Stripped like the .deb (`cargo deb --strip`).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/tablesnap target/release/tableslurp target/release/tablechop /out/ \
    && strip /out/*

FROM debian:bookworm-slim
# The uid that owns Cassandra's data volume. 999 is the `cassandra` user of the official
# Cassandra image: with the same uid the sidecar can read the SSTables (the files are 0644 and
# the directories 0755 under Cassandra's umask, but a stricter umask needs the same uid or a
# shared fsGroup).
ARG TABLESNAP_UID=999
ARG TABLESNAP_GID=999
# ca-certificates only: rustls reads the system roots (rustls-platform-verifier) to verify
# S3/GCS/Azure over https. Nothing else: the binaries need only glibc.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "$TABLESNAP_GID" cassandra \
    && useradd --system --uid "$TABLESNAP_UID" --gid cassandra --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin cassandra
COPY --from=build /out/tablesnap /out/tableslurp /out/tablechop /usr/bin/
# Not root: tablesnap only reads the data directory. A numeric USER lets Kubernetes'
# runAsNonRoot verify it without looking the name up in /etc/passwd.
USER ${TABLESNAP_UID}:${TABLESNAP_GID}
# --metrics-addr 0.0.0.0:9108 serves /metrics and /healthz here (not on by default).
EXPOSE 9108
# The daemon by default; `docker run --entrypoint tableslurp ...` for a restore.
ENTRYPOINT ["/usr/bin/tablesnap"]
CMD ["--help"]

LABEL org.opencontainers.image.title="tablesnap" \
      org.opencontainers.image.description="Back up Cassandra SSTables to object storage as they are written (tablesnap, tableslurp, tablechop)" \
      org.opencontainers.image.version="0.2.0" \
      org.opencontainers.image.licenses="BSD-2-Clause" \
      org.opencontainers.image.documentation="packaging/kubernetes/README.md"
