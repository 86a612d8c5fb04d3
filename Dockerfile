# doc-rag in one container: one binary, six module ports, one log stream on stdout.
#   docker build -t doc-rag . && docker run -p 8080:8080 -v doc-rag-data:/data doc-rag
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev python3 python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN bash scripts/fetch-models.sh /models && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/doc-rag /usr/local/bin/doc-rag
COPY --from=build /models /models
ENV DOCRAG__STORAGE__DATA_DIR=/data \
    DOCRAG__EMBEDDER__MODEL_DIR=/models \
    DOCRAG__LOG__FORMAT=json
VOLUME /data
EXPOSE 8080 8087 8084 8085 8082 8083
HEALTHCHECK --interval=15s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["doc-rag"]
CMD ["serve"]
