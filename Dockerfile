# wsbridge as a sidecar: `serve` on 0.0.0.0:8080. The image's defaults live in its config
# file, /etc/wsbridge/config.toml (config.toml with the listen addresses on all interfaces);
# mount your own there to replace it, and WSBRIDGE_* variables or flags still win over it.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock config.toml ./
COPY src ./src
# Cargo.toml names the e2e bench target, so its sources must be present for cargo to build.
COPY benches ./benches
COPY scripts/image-config ./scripts/image-config
# CI runs this same RUN line on the host (scripts/check-docker-steps), then the binary.
RUN cargo build --release --locked && scripts/image-config config.toml > image-config.toml

# distroless: glibc and CA certificates, no shell, a built-in non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/wsbridge /usr/local/bin/wsbridge
COPY --from=build /src/image-config.toml /etc/wsbridge/config.toml
EXPOSE 8080
# 65532 is distroless's `nonroot` user.
USER 65532:65532
# With no URL, `health` probes server.listen from the same file and WSBRIDGE_* variables as
# `serve`, so a port changed there is followed (a port changed with `serve --listen` is not).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/wsbridge", "--config", "/etc/wsbridge/config.toml", "health"]
ENTRYPOINT ["/usr/local/bin/wsbridge", "--config", "/etc/wsbridge/config.toml"]
CMD ["serve"]
