# syntax=docker/dockerfile:1
# rask's two binaries, `rask` (client CLI) and `rask-worker` (the stock worker), in one small
# image. Built by docker-compose.yml; also usable alone:
#   docker build -t rask .
#   docker run --rm -e RASK_AMQP_URL=... -e RASK_REDIS_URL=... rask            # a worker
#   docker run --rm -e RASK_AMQP_URL=... -e RASK_REDIS_URL=... rask rask submit inc 41
# No setting, password or key is baked in: everything comes from RASK_* variables (or a
# rask.toml mounted in /home/rask) at run time.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependency versions of the committed Cargo.lock. `otlp`: the worker
# exports spans when `RASK_OTLP_ENDPOINT` is set. The cache mounts keep
# the registry and build artefacts between builds; the binaries are copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p rask-cli -p rask-worker --features rask-worker/otlp \
    && mkdir -p /out \
    && cp target/release/rask target/release/rask-worker /out/ \
    && strip /out/rask /out/rask-worker

FROM debian:bookworm-slim
# ca-certificates: the system roots for amqps:// and rediss:// (see tls_ca_file for a private CA).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/rask --shell /usr/sbin/nologin rask
COPY --from=build /out/rask /out/rask-worker /usr/local/bin/
# A fixed uid, so that Kubernetes can check runAsNonRoot (deploy/k8s/worker.yaml).
USER rask
# Settings::load() reads an optional rask.toml from the working directory.
WORKDIR /home/rask
# A worker stops consuming on SIGTERM and finishes its tasks within shutdown_grace.
STOPSIGNAL SIGTERM
CMD ["rask-worker"]
