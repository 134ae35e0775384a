# syntax=docker/dockerfile:1
# One image holds all three services and the provider simulator; docker-compose.yml picks the
# binary with `command:`.
#
#   docker build -t checkout-services .
#   docker run --rm -e HOST=0.0.0.0 -e REDIS_URL=redis://… checkout-services stock-service

FROM rust:1-slim-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target/ live in BuildKit caches, so a rebuild after a source change only
# recompiles the workspace; the binaries are copied out because a cache mount is not in the image.
# No crate links a C library (no TLS: the services talk plain HTTP on the compose network), so
# the slim image needs no extra packages.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p order-service -p stock-service -p payment-service -p gateway-sim \
    && mkdir -p /out \
    && cp target/release/order-service target/release/stock-service target/release/payment-service \
       target/release/gateway-sim /out/

FROM debian:bookworm-slim AS runtime
# curl is for the container healthchecks (GET /ready).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin checkout
COPY --from=builder /out/order-service /out/stock-service /out/payment-service /out/gateway-sim /usr/local/bin/
USER checkout:checkout
# order, payment, stock (their *_PORT defaults); HOST must be 0.0.0.0 to be reachable.
EXPOSE 8081 8082 8083 9101 9102
# The binary is PID 1 and handles SIGTERM itself (drains for SHUTDOWN_GRACE).
CMD ["order-service"]
