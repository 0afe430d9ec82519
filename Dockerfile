# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian with a
# non-root user. The data dir is a volume so leases survive the container.
#
#   docker build -t streamcap .
#   docker run -p 8080:8080 -v streamcap-data:/var/lib/streamcap streamcap
#
# The image listens on 0.0.0.0, so it needs authentication configured
# (mount a config file with [auth] or [[auth.api_keys]]), or, for a trial
# behind a private network only, STREAMCAP_INSECURE_NO_AUTH=true.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artifacts between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p streamcap \
    && cp target/release/streamcap /usr/local/bin/streamcap

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 999 streamcap \
    && useradd --system --uid 999 --gid streamcap --home-dir /var/lib/streamcap --shell /usr/sbin/nologin streamcap \
    && install -d -o streamcap -g streamcap -m 0750 /var/lib/streamcap
COPY --from=build /usr/local/bin/streamcap /usr/local/bin/streamcap
COPY streamcap.example.toml /etc/streamcap/streamcap.example.toml
USER streamcap
WORKDIR /var/lib/streamcap
VOLUME ["/var/lib/streamcap"]
ENV STREAMCAP_LISTEN=0.0.0.0:8080 \
    STREAMCAP_DATA_DIR=/var/lib/streamcap \
    STREAMCAP_LOG_FORMAT=json
EXPOSE 8080
# tini forwards SIGTERM so that shutdown is graceful (the store is flushed).
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/streamcap"]
CMD ["serve"]
