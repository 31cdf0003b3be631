# syntax=docker/dockerfile:1
#
# gatekeeper container image.
#
#   docker build -t gatekeeper .
#   docker run -d --name gatekeeper -p 8080:8080 \
#       -v /srv/gatekeeper:/var/lib/gatekeeper gatekeeper
#
# Needs BuildKit (the default builder since Docker 23) for the heredoc below.
#
# Runtime image: gcr.io/distroless/cc-debian12:nonroot. gatekeeper is a single
# binary that needs only glibc and libgcc (TLS is rustls + ring: no OpenSSL),
# which is what distroless/cc carries — and nothing else: no shell, no package
# manager, no setuid binaries, ~25 MB instead of ~75 MB for bookworm-slim. Same
# Debian 12 glibc as the build image. The :nonroot tag runs as uid/gid 65532.
# The health check is the binary itself (`gatekeeper health`), so no curl is
# needed. For a shell when debugging, use `docker exec <ctr> gatekeeper status`
# or the :debug-nonroot tag, which adds busybox.

# ---------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binary is
# copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/gatekeeper /out/gatekeeper \
    && mkdir -p /out/var/lib/gatekeeper

# ---------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

COPY --from=build /out/gatekeeper /usr/local/bin/gatekeeper
# The toggle directory, owned by the runtime user: a named volume starts as a
# copy of it, so `docker exec <ctr> gatekeeper on` can write the toggle. A
# bind-mounted host directory must be readable by uid 65532 (and writable, for
# `gatekeeper on` inside the container and the fleet state file).
COPY --from=build --chown=65532:65532 /out/var/lib/gatekeeper /var/lib/gatekeeper

# Container configuration. Replace it with your own by mounting a file:
#   -v $PWD/gatekeeper.toml:/etc/gatekeeper/gatekeeper.toml:ro
# (keep `listen` on port 8080, or publish the port you choose instead).
COPY <<EOF /etc/gatekeeper/gatekeeper.toml
# gatekeeper — container configuration (written by the Dockerfile).
# Every key not set here has its default; see config/gatekeeper.toml.

# Every interface of the container; publish with -p 8080:8080.
listen = ["0.0.0.0:8080"]

[upstream]
# The application, e.g. a service named "app" on the same Docker network.
url = "http://app:8000"

[maintenance]
# /var/lib/gatekeeper is the image's VOLUME: bind-mount a host directory
# there to switch maintenance from the host with touch / rm.
toggle = "/var/lib/gatekeeper/maintenance-mode-on"

[admin]
# GET /healthz (the HEALTHCHECK), /status, /metrics. Loopback only: inside
# the container; change it (and publish the port) to scrape from outside.
listen = "127.0.0.1:9180"

[server]
# In-flight requests get this long after SIGTERM; kept under the 10 s that
# `docker stop` waits by default. Raise it together with --stop-timeout.
grace_period = "8s"
EOF

# Non-root: the distroless "nonroot" user.
USER 65532:65532
# `docker exec <ctr> gatekeeper on|off|status` finds the config without -c.
ENV GATEKEEPER_CONFIG=/etc/gatekeeper/gatekeeper.toml
VOLUME ["/var/lib/gatekeeper"]
EXPOSE 8080
# SIGTERM: stop accepting, finish in-flight requests, exit 0.
STOPSIGNAL SIGTERM
# `gatekeeper health` GETs the admin /healthz and exits 0 (healthy) or 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/gatekeeper", "health", "-c", "/etc/gatekeeper/gatekeeper.toml"]
ENTRYPOINT ["/usr/local/bin/gatekeeper"]
CMD ["run", "-c", "/etc/gatekeeper/gatekeeper.toml"]
