# flit-cache: a small image with the binary as entry point, run as non-root.
# Build: docker build -t flit-cache .      Run: docker run flit-cache run
# Railway builds it from railway.toml.

# Exact versions, the toolchain the test suite runs with; docs/release.md
# pins both images by digest when a release is cut.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a change in src/ does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs benches/ingest.rs benches/upload.rs \
    && cargo build --release --locked --bin flit-cache \
    && rm -rf src benches
COPY src ./src
COPY schemas ./schemas
COPY benches ./benches
# touch: the dummy build left newer timestamps than the copied sources.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin flit-cache \
    && mkdir -p /out/spool /out/warehouse

# Distroless: glibc, CA certificates and a non-root user, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/flit-cache /usr/local/bin/flit-cache
# Owned by nonroot, so volumes mounted there start writable.
COPY --from=build --chown=65532:65532 /out/ /home/nonroot/
WORKDIR /home/nonroot
# Listen on every interface inside the container; spool and local warehouse
# under the non-root user's home (mount a volume there to keep the spool
# across restarts).
# FLIT_SINK_REQUIRED: the image never picks a sink by itself (a container's
# own folder is lost at each redeploy): uploads refuse to start until the
# deployment sets FLIT_SINK (bigquery, or local on a volume), even with
# BIGQUERY_PROJECT set. Ingest runs regardless.
# HTTP on every interface, on PORT (9464, or the port the platform gives
# the container: Railway sends its health checks there).
ENV FLIT_HTTP_HOST=0.0.0.0 \
    PORT=9464 \
    FLIT_SPOOL_DIR=/home/nonroot/spool \
    FLIT_WAREHOUSE_DIR=/home/nonroot/warehouse \
    FLIT_LOG_FORMAT=json \
    FLIT_SINK_REQUIRED=1
EXPOSE 9464
# nonroot in distroless.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/flit-cache"]
CMD ["run"]
