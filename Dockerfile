# authd: multi-stage build, locked dependencies, slim non-root runtime.
# Build: docker build -t authd .   (buildah: see "Container" in README.md)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer, so editing authd does not rebuild them.
# The stub crate has the real manifest and lock file but an empty lib.rs and
# main.rs and no build script, so it needs none of the files authd embeds
# (include_str!/include_bytes!) or generates from: adding one never touches
# this layer. `cargo clean -p authd` then drops the stub's own artifacts, so the
# real build below cannot mistake them for fresh, whatever the files' mtimes.
# The workspace's other member (crates/authd-verify, the kit other services
# use) needs only its manifest and an empty lib.rs here: authd does not
# depend on it and it is never built in this image.
COPY Cargo.toml Cargo.lock ./
COPY crates/authd-verify/Cargo.toml crates/authd-verify/Cargo.toml
RUN mkdir src crates/authd-verify/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs crates/authd-verify/src/lib.rs \
    && cargo build --release --locked --bin authd \
    && cargo clean --release --locked -p authd \
    && rm -rf src crates/authd-verify/src
COPY . .
# The commit, for the authd_build_info metric (docker build --build-arg
# AUTHD_GIT_SHA=$(git rev-parse HEAD) .).
ARG AUTHD_GIT_SHA=unknown
ENV AUTHD_GIT_SHA=${AUTHD_GIT_SHA}
RUN cargo build --release --locked --bin authd

FROM debian:bookworm-slim AS runtime
# A uid/gid outside the host's usual ranges, so files it writes to a volume
# belong to nobody there.
RUN groupadd --gid 10001 authd \
    && useradd --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin authd
# TLS to Postgres (sslmode=verify-full) checks the server against this bundle,
# from the build stage's ca-certificates package: no apt in this stage.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/release/authd /usr/local/bin/authd
# Numeric, so runtimes (Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001
ENV BIND_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["authd", "healthcheck"]
ENTRYPOINT ["authd"]
CMD ["serve"]
