#!/usr/bin/env python3
"""Offline sweep of hybrid fusion settings on a loaded doc-rag collection.

Fetches each query's dense and keyword rankings (with scores) once through `/v1/search`, then
scores fusion methods, weights, RRF k and candidate depths on them without asking the server
again, printing nDCG@10 / Recall@10 / Recall@100 / MRR@10 per setting (BEIR / trec_eval
definitions, as `doc-rag eval` and irbench compute them). The fusion formulas mirror
`src/query/fusion.rs`; the winner is then confirmed through the service with `doc-rag eval`.

    doc-rag eval --dataset ../shared/datasets/dbpedia-5k --mode all   # loads the corpus
    python3 scripts/fusion-sweep.py --url http://127.0.0.1:8080 \
        --dataset ../shared/datasets/dbpedia-5k [--token T] [--collection default]

Standard library only.
"""

import argparse
import json
import math
import os
import statistics
import sys
import urllib.request


def load_dataset(root):
    queries = {}
    with open(os.path.join(root, "queries.jsonl")) as f:
        for line in f:
            if line.strip():
                q = json.loads(line)
                queries[str(q["_id"])] = q["text"]
    qrels = {}
    with open(os.path.join(root, "qrels", "test.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            try:
                grade = int(parts[2])
            except ValueError:
                continue  # header row
            qrels.setdefault(parts[0], {})[parts[1]] = grade
    return queries, qrels


def search(url, token, collection, query, mode, top_k):
    body = {"query": query, "mode": mode, "top_k": top_k}
    if collection:
        body["collection"] = collection
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/search",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "cache-control": "no-cache"},
    )
    if token:
        req.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=60) as r:
        out = json.load(r)
    return [
        (h["chunk_id"], h["metadata"].get("source_id", h["document_id"]), h["score"])
        for h in out["results"]
    ]


def ndcg10(ranked_docs, rels):
    seen, dcg = set(), 0.0
    rank = 0
    for d in ranked_docs:
        if d in seen:
            continue
        seen.add(d)
        if rank < 10:
            dcg += rels.get(d, 0) / math.log2(rank + 2)
        rank += 1
    ideal = sorted((g for g in rels.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def dedup(docs):
    seen, out = set(), []
    for d in docs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def recall(ranked_docs, rels, k):
    relevant = {d for d, g in rels.items() if g > 0}
    return len(relevant & set(dedup(ranked_docs)[:k])) / len(relevant)


def mrr10(ranked_docs, rels):
    for i, d in enumerate(dedup(ranked_docs)[:10]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def normalise(scores, how):
    if not scores:
        return []
    if how == "minmax":
        lo, hi = min(scores), max(scores)
    elif how == "dbsf":
        m = statistics.fmean(scores)
        sd = statistics.pstdev(scores)
        lo, hi = m - 3 * sd, m + 3 * sd
    elif how == "max":
        lo, hi = 0.0, max(scores)
    elif how == "raw":
        return list(scores)
    elif how == "z":
        m = statistics.fmean(scores)
        sd = statistics.pstdev(scores) or 1.0
        return [(s - m) / sd for s in scores]
    span = hi - lo
    return [1.0 if span <= 1e-9 else min(1.0, max(0.0, (s - lo) / span)) for s in scores]


def fuse(dense, keyword, method, wd, wk, k, depth, how="minmax", missing=0.0):
    """Returns the fused list of (chunk, doc) best first; ties by chunk id."""
    dense, keyword = dense[:depth], keyword[:depth]
    docs = {c: d for c, d, _ in dense + keyword}
    score = {}
    if method == "rrf":
        for w, lst in ((wd, dense), (wk, keyword)):
            if w <= 0:
                continue
            for rank, (c, _, _) in enumerate(lst):
                score[c] = score.get(c, 0.0) + 1.0 / ((rank + 1) / w + k - 1)
    else:
        for w, lst in ((wd, dense), (wk, keyword)):
            norm = normalise([s for _, _, s in lst], how)
            present = set()
            for (c, _, _), n in zip(lst, norm):
                score[c] = score.get(c, 0.0) + w * n
                present.add(c)
            for c in docs:
                if c not in present:
                    score[c] = score.get(c, 0.0) + w * missing
    ranked = sorted(score, key=lambda c: (-score[c], c))
    return [docs[c] for c in ranked]


def evaluate(runs, qrels, fn):
    n, r10, r100, mrr = [], [], [], []
    for qid, (dense, keyword) in runs.items():
        rels = qrels.get(qid, {})
        if not any(g > 0 for g in rels.values()):
            continue
        docs = fn(dense, keyword)
        n.append(ndcg10(docs, rels))
        r10.append(recall(docs, rels, 10))
        r100.append(recall(docs, rels, 100))
        mrr.append(mrr10(docs, rels))
    return tuple(statistics.fmean(x) for x in (n, r10, r100, mrr))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--token", default=os.environ.get("DOCRAG_TOKEN"))
    ap.add_argument("--collection", default=None)
    ap.add_argument("--depth", type=int, default=100, help="candidates fetched per ranking")
    ap.add_argument("--cache", help="read/write the fetched rankings here (JSON)")
    ap.add_argument("--json", action="store_true", help="one JSON object per setting")
    args = ap.parse_args()

    queries, qrels = load_dataset(args.dataset)
    if args.cache and os.path.exists(args.cache):
        with open(args.cache) as f:
            runs = {q: (list(map(tuple, d)), list(map(tuple, k))) for q, (d, k) in json.load(f).items()}
    else:
        runs = {}
        for i, (qid, text) in enumerate(queries.items()):
            runs[qid] = tuple(
                search(args.url, args.token, args.collection, text, mode, args.depth)
                for mode in ("dense", "keyword")
            )
            print(f"\rfetched {i + 1}/{len(queries)}", end="", file=sys.stderr)
        print(file=sys.stderr)
        if args.cache:
            with open(args.cache, "w") as f:
                json.dump(runs, f)

    settings = [("dense only", lambda d, k: [x[1] for x in d]),
                ("keyword only", lambda d, k: [x[1] for x in k])]
    for depth in (20, 50, 100):
        for rk in (10, 20, 60):
            for wk in (1.0, 0.5, 0.3):
                settings.append((f"rrf k={rk} w=1:{wk} depth={depth}",
                                 lambda d, k, rk=rk, wk=wk, depth=depth: fuse(d, k, "rrf", 1.0, wk, rk, depth)))
        for how in ("minmax", "dbsf", "max", "z"):
            for wd in (0.5, 0.6, 0.7, 0.8, 0.9):
                settings.append((f"{how} {wd}:{round(1 - wd, 2)} depth={depth}",
                                 lambda d, k, how=how, wd=wd, depth=depth: fuse(d, k, "score", wd, 1 - wd, 0, depth, how)))
    rows = [(name, evaluate(runs, qrels, fn)) for name, fn in settings]
    for name, (n, r10, r100, mrr) in rows:
        if args.json:
            print(json.dumps({"setting": name, "ndcg@10": n, "recall@10": r10, "recall@100": r100, "mrr@10": mrr}))
        else:
            print(f"{name:32} nDCG@10 {n:.4f}  R@10 {r10:.4f}  R@100 {r100:.4f}  MRR@10 {mrr:.4f}")


if __name__ == "__main__":
    main()
