# syntax=docker/dockerfile:1
# botbridge as a container image (packaging/README.md): built from this checkout, run as an
# unprivileged user with the Debian package's layout: /usr/bin/botbridge,
# /etc/botbridge/proxy.toml, state in /var/lib/botbridge.
#
#   docker build -t botbridge .
#   docker run -d --name botbridge -p 8080:8080 -v botbridge-state:/var/lib/botbridge \
#       -v "$PWD/proxy.toml:/etc/botbridge/proxy.toml:ro" botbridge
#   docker run --rm -v "$PWD/proxy.toml:/etc/botbridge/proxy.toml:ro" botbridge check
#   docker kill -s HUP botbridge     # reload the configuration
#   docker stop -t 30 botbridge      # graceful stop: SIGTERM, in-flight requests finish
#
# Secrets: mount them as files (Docker or Kubernetes secrets, e.g. /run/secrets/NAME) and name them
# in proxy.toml as { file = "/run/secrets/NAME" }, readable by uid 10001.

FROM rust:bookworm AS build
# pingora builds zlib-ng with cmake, which the Rust image lacks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# What `cargo build` reads: the workspace, the bench target its manifest declares, and the OpenAPI
# documents the dialects embed.
COPY Cargo.toml Cargo.lock ./
COPY core ./core
COPY src ./src
COPY benches ./benches
COPY docs/openapi ./docs/openapi
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin botbridge \
    && install -D -m 0755 target/release/botbridge /out/usr/bin/botbridge
# The Debian package's configuration, with the chat listener on every address (a container's
# loopback is its own). The admin listener stays on loopback: the health check below uses it; to
# scrape /metrics from outside, mount a proxy.toml whose [admin] has a token.
COPY packaging/proxy.toml /tmp/proxy.toml
RUN sed -e 's/^listen = "127.0.0.1:8080"/listen = "0.0.0.0:8080"/' \
        -e '1i # In the container image: chat listener on 0.0.0.0:8080, admin on the container'"'"'s loopback;\n# secrets as mounted files, { file = "/run/secrets/NAME" }; reload with `docker kill -s HUP`.\n# The systemd notes below are for the Debian package.\n#' \
        /tmp/proxy.toml >/tmp/container.toml \
    && grep -q '^listen = "0.0.0.0:8080"' /tmp/container.toml \
    && install -D -m 0644 /tmp/container.toml /out/etc/botbridge/proxy.toml

FROM debian:bookworm-slim
# ca-certificates: the platform roots for https bots (rustls reads /etc/ssl/certs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 botbridge \
    && useradd --system --uid 10001 --gid botbridge --home-dir /var/lib/botbridge --no-create-home \
        --shell /usr/sbin/nologin botbridge \
    && install -d -m 0700 -o botbridge -g botbridge /var/lib/botbridge /run/botbridge
COPY --from=build /out/ /
USER 10001:10001
WORKDIR /etc/botbridge
# The image's own configuration must pass, as the user that runs it (its directories included).
RUN ["/usr/bin/botbridge", "check", "--config", "/etc/botbridge/proxy.toml"]
# The delivery journal, the spool and dead letters: keep them across containers.
VOLUME ["/var/lib/botbridge"]
EXPOSE 8080
STOPSIGNAL SIGTERM
# GET /healthz on the admin listener (127.0.0.1:9090: a mounted proxy.toml keeps [admin] listen there,
# or overrides this with --health-cmd), with bash's /dev/tcp (no curl in the image).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200$'"]
ENTRYPOINT ["/usr/bin/botbridge"]
CMD ["--config", "/etc/botbridge/proxy.toml"]
