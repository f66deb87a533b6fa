# sift's two binaries in one image: `sift-ingest` (the default command) and `sift-batcher`
# (migrations, workers, operator commands; the SQL and the dashboard are compiled in).
#   docker build -t sift:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sift-ingest-api -p sift-batcher --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home sift
COPY --from=build /src/target/release/sift-ingest /src/target/release/sift-batcher /usr/local/bin/
USER 10001
# In a container: listen on every interface, log JSON for the collector.
ENV SIFT_LISTEN=0.0.0.0:8080 \
    SIFT_BATCHER_LISTEN=0.0.0.0:9090 \
    SIFT_LOG_FORMAT=json
EXPOSE 8080 9090
CMD ["sift-ingest"]
