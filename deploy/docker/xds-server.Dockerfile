# xds-server and wardctl. Build from the workspace root:
#   docker build -f deploy/docker/xds-server.Dockerfile -t ward/xds-server .
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build -p xds-server -p wardctl --release --bins

FROM debian:bookworm-slim
# iptables: the image is also the injected pods' `ward-init` (traffic capture) and
# `ward-bootstrap` init containers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/*
# Same uid as Istio's proxy user.
RUN groupadd --gid 1337 ward \
 && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin ward
COPY --from=builder /src/target/release/xds-server /usr/local/bin/xds-server
COPY --from=builder /src/target/release/wardctl /usr/local/bin/wardctl
USER 1337:1337
# 15010: ADS (gRPC). 15014: /metrics, /status, /healthz. 15012: HTTPS, the admission webhook
# and the pods' credential exchange (--https-address).
EXPOSE 15010 15014 15012
ENTRYPOINT ["/usr/local/bin/xds-server"]
CMD ["serve","--config","/etc/ward/config","--xds-address","0.0.0.0:15010","--admin-address","0.0.0.0:15014"]
