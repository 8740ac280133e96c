# syntax=docker/dockerfile:1
# authd: multi-stage build, locked dependencies, slim non-root runtime.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations ./migrations
RUN mkdir -p src demo \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs demo/index.html demo/app.js .env.example \
    && cargo build --release --locked \
    && rm -rf src
COPY . .
# The commit, for the authd_build_info metric (docker build --build-arg
# AUTHD_GIT_SHA=$(git rev-parse HEAD) .).
ARG AUTHD_GIT_SHA=unknown
ENV AUTHD_GIT_SHA=${AUTHD_GIT_SHA}
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim AS runtime
# TLS to Postgres (sslmode=verify-full) trusts the system's CA store.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system authd && useradd --system --gid authd --no-create-home authd
COPY --from=build /src/target/release/authd /usr/local/bin/authd
USER authd
ENV BIND_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["authd", "healthcheck"]
ENTRYPOINT ["authd"]
CMD ["serve"]
