# wsbridge as a sidecar: `serve` on 0.0.0.0:8080. Configure with WSBRIDGE_* environment
# variables or mount a config file at /etc/wsbridge/config.toml.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names the e2e bench target, so its sources must be present for cargo to build.
COPY benches ./benches
RUN cargo build --release --locked

# distroless: glibc and CA certificates, no shell, a built-in non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/wsbridge /usr/local/bin/wsbridge
COPY config.toml /etc/wsbridge/config.toml
ENV WSBRIDGE_SERVER_LISTEN=0.0.0.0:8080
EXPOSE 8080
# 65532 is distroless's `nonroot` user.
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/wsbridge", "health", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/wsbridge", "--config", "/etc/wsbridge/config.toml"]
CMD ["serve"]
