# doc-rag in one container: one binary, six module ports, one log stream on stdout.
#   docker build -t doc-rag . && docker run -p 8080:8080 -v doc-rag-data:/data doc-rag
# A release image carries its version and commit as OCI labels:
#   docker build -t doc-rag/api:0.1.0 \
#     --build-arg VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)" \
#     --build-arg REVISION="$(git rev-parse HEAD)" .
# It runs as the unprivileged user docrag (uid 10001), with the model files baked in under
# /models and its state in the /data volume; it works with a read-only root file system when
# /data and /tmp are writable (deploy/k8s/deployment.yaml).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev python3 python3-pip python3-venv && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The commit is compiled in: build_info{git_sha} on /metrics says which build serves.
ARG REVISION=unknown
RUN bash scripts/fetch-models.sh /models && DOCRAG_GIT_SHA="${REVISION}" cargo build --release --locked

FROM debian:bookworm-slim
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/doc-rag/doc-rag
LABEL org.opencontainers.image.title="doc-rag" \
      org.opencontainers.image.description="Production document-RAG service: ingest documents, ask questions, get cited answers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 ca-certificates curl && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 docrag \
    && useradd --system --uid 10001 --gid docrag --home-dir /data --no-create-home --shell /usr/sbin/nologin docrag \
    && mkdir -p /data && chown docrag:docrag /data
COPY --from=build /src/target/release/doc-rag /usr/local/bin/doc-rag
# Read-only for the service: root owns the model files.
COPY --from=build /models /models
ENV DOCRAG__STORAGE__DATA_DIR=/data \
    DOCRAG__EMBEDDER__MODEL_DIR=/models \
    DOCRAG__LOG__FORMAT=json
# Owned by docrag before VOLUME, so a new named volume starts out writable for it.
VOLUME /data
USER 10001:10001
EXPOSE 8080 8087 8084 8085 8082 8083
# Ready, not just alive: 503 while a required dependency (database, MongoDB, Qdrant, the
# embedder) is down.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
ENTRYPOINT ["doc-rag"]
CMD ["serve"]
