# The local platform, `aop` (functions/local), as an image: what docker-compose.dev.yml runs.
# The Lambda functions are not built here: `sam build` (cargo lambda) packages those.
#
#   docker build -t aop:dev .
#   docker run --rm -p 8000:8000 -e AOP_API_KEYS=dev-key aop:dev      # embedded store in /var/lib/aop
#
# The image listens on 0.0.0.0, which the server only does with API keys: set AOP_API_KEYS.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The bundled librdkafka and the vendored OpenSSL build from source with the image's gcc, make and
# perl; SQLite is bundled too. The whole workspace is copied because cargo resolves every member.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aop-local --bin aop \
    && cp target/release/aop /usr/local/bin/aop

FROM debian:bookworm-slim
# ca-certificates for TLS to Neo4j Aura, MSK and the LLM API; curl for the health check. The
# binary links only glibc, libgcc and zlib, all in the base image. Debian's security updates
# replace exact package versions, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 aop \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/aop --create-home \
       --shell /usr/sbin/nologin aop
COPY --from=build /usr/local/bin/aop /usr/local/bin/aop
USER 10001:10001
WORKDIR /var/lib/aop
ENV AOP_DATA_DIR=/var/lib/aop \
    MCP_SERVER_HOST=0.0.0.0 \
    MCP_SERVER_PORT=8000
EXPOSE 8000
# /health answers 200 when the store is up, 503 when it is down (no authentication needed).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${MCP_SERVER_PORT}/health >/dev/null"]
ENTRYPOINT ["aop"]
CMD ["serve"]
