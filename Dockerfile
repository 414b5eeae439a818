# syntax=docker/dockerfile:1.7
#
# chat-server container image.
#
#   docker build -t chat-server:dev .
#   docker run --rm -p 8080:8080 chat-server:dev                 # embedded mode (SQLite in /data)
#   docker run --rm chat-server:dev migrate                      # apply migrations and exit
#
# Stages:
#   chef     Rust toolchain + cargo-chef
#   planner  turns the workspace manifests (root, entity, migration, bench, testkit) into recipe.json
#   builder  cooks the dependencies from recipe.json (a layer that is reused until a
#            Cargo.toml / Cargo.lock changes), then builds the real chat-server binary
#   runtime  debian slim, no toolchain, non-root uid 10001
#
# Nothing here needs OpenSSL: every TLS stack in Cargo.lock is rustls, and SQLite is bundled.

ARG RUST_VERSION=1.95
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_SUITE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# The patched sqlx-core ([patch.crates-io] in Cargo.toml) is a dependency, not a workspace
# member: the recipe does not carry it, so it comes in before the dependency layer.
COPY vendor vendor
# Dependency layer: only invalidated when the recipe (manifests + lockfile) changes.
# The cache mounts keep the crates.io index and downloads between builds on one machine.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked --recipe-path recipe.json --package chat-server
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked --package chat-server --bin chat-server \
    && install -D -m 0755 target/release/chat-server /out/chat-server

FROM debian:${DEBIAN_SUITE}-slim AS runtime
# A fixed, high uid/gid so Kubernetes `runAsNonRoot` can verify it and host volumes can be
# chowned predictably. /data is the working directory: embedded mode's default
# DATABASE_URL (sqlite://chat.db?mode=rwc) creates its file there.
RUN groupadd --system --gid 10001 chat \
    && useradd --system --no-log-init --uid 10001 --gid chat --home-dir /data --shell /usr/sbin/nologin chat \
    && install -d -o chat -g chat -m 0750 /data
# CA roots for rustls connections to managed PostgreSQL/Redis/OTLP endpoints, taken from
# the builder so the runtime needs no apt-get.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/chat-server /usr/local/bin/chat-server

ENV BIND_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    RUST_LOG=info \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

USER 10001:10001
WORKDIR /data
EXPOSE 8080

# No curl in the image: bash's /dev/tcp asks /healthz on the port from BIND_ADDR.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${BIND_ADDR##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["chat-server"]
CMD ["serve"]
