#!/usr/bin/env bash
# Search latency (and ingestion rate) of doc-rag on each backend combination, measured by
# ../shared/bench/irbench.py over HTTP on the same machine in one run, so the numbers compare.
#
#   scripts/backend-latency.sh [--max-docs N] [combination ...]
#
# Combinations: embedded (SQLite + qdrant-edge + in-process cache), postgres, postgres-redis,
# sqlite-mongodb, postgres-redis-mongodb, and — when DOCRAG_TEST_QDRANT_URL points at a Qdrant
# server's gRPC port — postgres-redis-mongodb-qdrant. MongoDB is SecantusDB from the venv
# `scripts/ensure-services.sh` installs (a MongoDB-wire server; not a MongoDB for speed claims).
# Writes one irbench JSON per combination to $OUT (default /tmp/docrag-backends) and prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/doc-rag-target}/debug/doc-rag}"
MODELS="${DOCRAG_MODELS_DIR:-$PWD/models}"
DATA="${DATA:-../shared/datasets/dbpedia-5k}"
OUT="${OUT:-/tmp/docrag-backends}"
PG_ADMIN="${DOCRAG_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
REDIS="${DOCRAG_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
SECANTUSD="${DOCRAG_TEST_SECANTUSD:-$HOME/.cache/doc-rag-venv/bin/secantusd-py}"
MAX_DOCS=0
if [ "${1:-}" = "--max-docs" ]; then MAX_DOCS="$2"; shift 2; fi
COMBOS=("$@")
if [ ${#COMBOS[@]} -eq 0 ]; then
  COMBOS=(embedded postgres postgres-redis sqlite-mongodb postgres-redis-mongodb)
  [ -n "${DOCRAG_TEST_QDRANT_URL:-}" ] && COMBOS+=(postgres-redis-mongodb-qdrant)
fi
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no doc-rag binary at $BIN: run make build" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PASSWORD="bench-admin-password-$$"

run_combo() {
  local combo="$1" dir pg_db="" mongo_pid="" server_pid port env=()
  dir=$(mktemp -d /tmp/docrag-bench.XXXXXX)
  env+=(DOCRAG__STORAGE__DATA_DIR="$dir/data" DOCRAG__EMBEDDER__MODEL_DIR="$MODELS"
        DOCRAG__SECURITY__ADMIN_EMAIL=bench@localhost DOCRAG__SECURITY__ADMIN_PASSWORD="$PASSWORD"
        DOCRAG__LOG__LEVEL=warn)
  case "$combo" in *postgres*)
    pg_db="docrag_bench_$$_${RANDOM}"
    psql -q "$PG_ADMIN" -c "CREATE DATABASE $pg_db"
    env+=(DOCRAG__DATABASE__URL="${PG_ADMIN%/*}/$pg_db");;
  esac
  case "$combo" in *redis*)
    env+=(DOCRAG__CACHE__REDIS_URL="$REDIS" DOCRAG__CACHE__REDIS_PREFIX="docrag-bench-$$-$RANDOM:");;
  esac
  case "$combo" in *mongodb*)
    port=$(free_port)
    "$SECANTUSD" --host 127.0.0.1 --port "$port" --storage-path "$dir/mongo" --log-level WARNING \
      >"$dir/mongo.log" 2>&1 &
    mongo_pid=$!
    mkdir -p "$dir/mongo"
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
    env+=(DOCRAG__DOCUMENTS__MONGODB_URL="mongodb://127.0.0.1:$port/?directConnection=true");;
  esac
  case "$combo" in *qdrant*)
    env+=(DOCRAG__VECTORS__QDRANT_URL="$DOCRAG_TEST_QDRANT_URL"
          DOCRAG__VECTORS__COLLECTION="docrag_bench_$$_$RANDOM");;
  esac
  env "${env[@]}" "$BIN" serve >"$dir/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 240); do curl -sf localhost:8080/ready >/dev/null && break; sleep 0.5; done
  local token key
  token=$(curl -sf localhost:8080/v1/auth/login -H 'content-type: application/json' \
    -d "{\"email\":\"bench@localhost\",\"password\":\"$PASSWORD\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  key=$(curl -sf localhost:8080/v1/api-keys -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{"name":"irbench","role":"admin"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  echo "== $combo"
  DOCRAG_TOKEN="$key" python3 ../shared/bench/irbench.py --system docrag --data "$DATA" \
    --max-docs "$MAX_DOCS" --label "$combo" --server-pid "$server_pid" --distinct-queries \
    --quiet --out "$OUT/$combo.json" || echo "irbench failed for $combo (see $dir/server.log)"
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  [ -n "$mongo_pid" ] && { kill "$mongo_pid"; wait "$mongo_pid" 2>/dev/null || true; }
  [ -n "$pg_db" ] && psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)"
  rm -rf "$dir"
}

for combo in "${COMBOS[@]}"; do run_combo "$combo"; done

python3 - "$OUT" "${COMBOS[@]}" <<'EOF'
import json, os, sys
out, combos = sys.argv[1], sys.argv[2:]
print(f"{'combination':32} {'ingest docs/s':>13} {'search p50 ms':>13} {'p95 ms':>7} {'first-pass p50':>14} {'8 clients q/s':>13} {'nDCG@10':>8}")
for c in combos:
    p = os.path.join(out, f"{c}.json")
    if not os.path.exists(p):
        print(f"{c:32} (no result)"); continue
    r = json.load(open(p))
    ing = (r.get("ingest") or {}).get("docs_per_s") or 0
    seq = r.get("sequential") or {}
    fp = seq.get("first_pass") or {}
    conc = r.get("concurrent") or {}
    q = r.get("quality") or {}
    print(f"{c:32} {ing:13.1f} {seq.get('p50_ms') or 0:13.2f} {seq.get('p95_ms') or 0:7.2f} "
          f"{fp.get('p50_ms') or 0:14.2f} {conc.get('qps') or 0:13.1f} {q.get('ndcg@10') or 0:8.3f}")
EOF
