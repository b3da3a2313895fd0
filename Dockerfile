# outbox-relay in a container: a Rust build stage, then a slim runtime with
# CA certificates (for https endpoints) and an unprivileged user.
#
#   docker build -t outbox-relay .
#   docker run --rm -e DATABASE_URL=postgres://... outbox-relay migrate
#   docker run -d --name relay -p 9187:9187 --env-file relay.env \
#       -v "$PWD/relay.toml:/etc/outbox-relay/relay.toml:ro" --stop-timeout 30 outbox-relay
#
# The config's `listen` must be "0.0.0.0:9187" for /healthz, /readyz, /metrics
# and the status API to be reachable from outside the container.
# docs/deployment.md describes the image.

FROM rust:1-bookworm AS build
WORKDIR /src
# Everything the crate's targets name: the relay binary embeds sql/ and
# migrations/ at compile time; bench/ holds the second binary of Cargo.toml.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY sql ./sql
COPY migrations ./migrations
COPY bench ./bench
RUN cargo build --release --locked --bin outbox-relay \
 && strip target/release/outbox-relay

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin outbox-relay \
 && mkdir -p /etc/outbox-relay
COPY --from=build /src/target/release/outbox-relay /usr/local/bin/outbox-relay
# The reference triggers, for DBAs installing them from the image.
COPY sql/example_app.sql sql/triggers.sql /usr/share/outbox-relay/sql/
USER 10001:10001
WORKDIR /etc/outbox-relay
EXPOSE 9187
# Exec form: the relay is PID 1 and receives SIGTERM itself (docker stop), then
# finishes or releases its in-flight rows and exits 0. Give it more than
# shutdown_timeout + 10s to do so (--stop-timeout, stop_grace_period).
ENTRYPOINT ["outbox-relay"]
CMD ["run", "--config", "/etc/outbox-relay/relay.toml", "--log-format", "json"]
