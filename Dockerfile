# rask's two binaries, `rask` (client CLI) and `rask-worker` (the stock worker), in one image.
# Built by docker-compose.yml; also usable alone:
#   docker build -t rask .
#   docker run --rm -e RASK_AMQP_URL=... -e RASK_REDIS_URL=... rask rask-worker

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# --locked: build exactly the dependency versions of the committed Cargo.lock.
RUN cargo build --release --locked --bins -p rask -p rask-worker

FROM debian:bookworm-slim
# ca-certificates: rustls reads the system roots for amqps:// and rediss:// URLs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /home/rask --shell /usr/sbin/nologin rask
COPY --from=build /src/target/release/rask /src/target/release/rask-worker /usr/local/bin/
USER rask
# Settings::load() reads an optional rask.toml from the working directory; mount one here if
# environment variables (RASK_*) are not enough.
WORKDIR /home/rask
CMD ["rask-worker"]
