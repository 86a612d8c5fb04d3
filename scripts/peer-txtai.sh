#!/usr/bin/env bash
# The peer of issue 8's comparisons: txtai's API serving hybrid search with the same int8
# all-MiniLM-L6-v2 ONNX model doc-rag uses (models/model.onnx, its tokenizer.json beside it,
# 256 tokens), so irbench compares the two services and not two models.
#
#   scripts/peer-txtai.sh [port]      (default 8000; installs into $DOCRAG_PEER_DIR first)
#
# then, in another shell:
#   python3 ../shared/bench/irbench.py --system txtai --data ../shared/datasets/dbpedia-5k \
#       --server-pid $(pgrep -n -f 'uvicorn txtai.api') --distinct-queries --out txtai.json
#
# The install (txtai with its API extra, which pulls PyTorch from PyPI: ~3 GB) is kept in
# $DOCRAG_PEER_DIR (default ~/.cache/doc-rag/peer-txtai). Nothing is downloaded at run time:
# the Hugging Face hub is switched off, and the index lives in memory (a fresh one per start).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${DOCRAG_PEER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/doc-rag/peer-txtai}"
port="${1:-8000}"
txtai_version="9.14.0"
models="${DOCRAG__EMBEDDER__MODEL_DIR:-$root/models}"

[ -f "$models/model.onnx" ] || { echo "peer: $models/model.onnx is missing (make models)" >&2; exit 1; }
if ! "$dir/venv/bin/python" -c "import onnxruntime, importlib.metadata as m; assert m.version('txtai') == '$txtai_version'" 2>/dev/null; then
  mkdir -p "$dir"
  [ -x "$dir/venv/bin/python" ] || python3 -m venv "$dir/venv"
  echo "peer: installing txtai[api]==$txtai_version and onnxruntime into $dir/venv"
  "$dir/venv/bin/pip" install --quiet "txtai[api]==$txtai_version" onnxruntime
fi

cat > "$dir/config.yml" <<EOF
writable: true
embeddings:
  path: $models/model.onnx
  maxlength: 256
  content: true
  hybrid: true
EOF
cd "$dir"
echo "peer: txtai $txtai_version on 127.0.0.1:$port, model $models/model.onnx"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CONFIG="$dir/config.yml" \
  exec "$dir/venv/bin/uvicorn" txtai.api:app --host 127.0.0.1 --port "$port" --log-level warning
