# syntax=docker/dockerfile:1
# One build for Sluice's three programs; docker-compose.yml picks a final stage with `target:`
# (api, worker, mock-gemini). Dependencies are compiled in their own layer (cargo-chef), so a
# change to Sluice's code rebuilds only Sluice. The runtime is debian:bookworm-slim, as user
# `sluice` (uid 10001), never root.

ARG RUST_VERSION=1.94

FROM rust:${RUST_VERSION}-bookworm AS chef
# aws-lc-sys (rustls' crypto) builds with cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /src

# The recipe: only the manifests and lock file matter, so it changes when dependencies do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The cached layer: every dependency of the workspace, built from the recipe alone.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin sluice-api --bin sluice-worker --bin mock-gemini

# What every final stage shares: CA certificates for TLS to the provider, curl for health
# checks, and an unprivileged user.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --home-dir /app --shell /usr/sbin/nologin sluice
WORKDIR /app
USER 10001:10001
ENV RUST_LOG=info,sqlx=warn SLUICE__TELEMETRY__FORMAT=json

FROM runtime AS api
COPY --from=builder /src/target/release/sluice-api /usr/local/bin/sluice-api
# /metrics on a port of its own: publish 8080 only, and let Prometheus reach 9464 from inside.
ENV SLUICE__HTTP__ADDR=0.0.0.0:8080 SLUICE__HTTP__METRICS_ADDR=0.0.0.0:9464
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/sluice-api"]

FROM runtime AS worker
COPY --from=builder /src/target/release/sluice-worker /usr/local/bin/sluice-worker
ENV SLUICE__WORKER__HEALTH_ADDR=0.0.0.0:8081
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/sluice-worker"]

FROM runtime AS mock-gemini
COPY --from=builder /src/target/release/mock-gemini /usr/local/bin/mock-gemini
ENV MOCK_GEMINI_ADDR=0.0.0.0:8090
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/mock-gemini"]
