#!/usr/bin/env python3
"""Does `confidence` mean something? Asks every judged query of a BEIR-layout dataset through
`POST /v1/query` and relates each answer's confidence to whether its top source is relevant.

Prints a reliability table (confidence bins: answers, share whose first citation is relevant),
the AUC (the chance that an answer with a relevant top source has the higher confidence than one
without) and the correlation between confidence and the answer's best citation grade.

    doc-rag eval --dataset ../shared/datasets/dbpedia-5k --mode dense   # loads the corpus
    python3 scripts/confidence-check.py --url http://127.0.0.1:8080 \
        --dataset ../shared/datasets/dbpedia-5k --collection <eval collection> [--token T]

Standard library only. The answers are extractive unless --generator auto is given.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import urllib.parse
import urllib.request


def load(root):
    """Queries and graded judgements, read as the fusion sweep reads them."""
    spec = importlib.util.spec_from_file_location(
        "fusion_sweep", os.path.join(os.path.dirname(os.path.abspath(__file__)), "fusion-sweep.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    return sweep.load_dataset(root)


def call(url, token, path, body=None):
    req = urllib.request.Request(url.rstrip("/") + path)
    if body is not None:
        req.data = json.dumps(body).encode()
        req.add_header("content-type", "application/json")
        req.add_header("cache-control", "no-cache")
    if token:
        req.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def source_ids(url, token, collection):
    """document_id -> corpus _id (external_id), for every document of the collection."""
    out, offset = {}, 0
    while True:
        q = urllib.parse.urlencode({"collection": collection, "limit": 1000, "offset": offset})
        page = call(url, token, "/v1/documents?" + q)
        docs = page.get("documents", [])
        for d in docs:
            out[d["id"]] = d.get("external_id") or d.get("metadata", {}).get("source_id")
        if len(docs) < 1000:
            return out
        offset += 1000


def auc(pos, neg):
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--token", default=os.environ.get("DOCRAG_TOKEN"))
    ap.add_argument("--generator", default="extractive", choices=["extractive", "auto"])
    ap.add_argument("--max-queries", type=int, default=0)
    args = ap.parse_args()

    queries, qrels = load(args.dataset)
    ids = source_ids(args.url, args.token, args.collection)
    rows = []
    judged = [q for q in queries if q in qrels]
    if args.max_queries:
        judged = judged[: args.max_queries]
    for i, qid in enumerate(judged):
        answer = call(args.url, args.token, "/v1/query", {
            "query": queries[qid], "collection": args.collection, "generator": args.generator,
        })
        cited = [ids.get(c["document_id"]) for c in answer["citations"]]
        top = qrels[qid].get(cited[0], 0) if cited else 0
        rows.append((answer["confidence"], top))
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{len(judged)}", file=sys.stderr)

    print(f"{len(rows)} answers, mean confidence {statistics.mean(c for c, _ in rows):.3f}, "
          f"max {max(c for c, _ in rows):.3f}")
    print("confidence   answers  top source relevant")
    for lo in [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]:
        hi = {0.0: 0.2, 0.8: 1.01}.get(lo, round(lo + 0.1, 1))
        b = [g for c, g in rows if lo <= c < hi]
        if b:
            share = sum(g > 0 for g in b) / len(b)
            print(f"[{lo:.1f}, {min(hi, 1.0):.1f})  {len(b):8d}  {share:8.1%}")
    pos = [c for c, g in rows if g > 0]
    neg = [c for c, g in rows if g == 0]
    print(f"AUC (relevant top source vs not): {auc(pos, neg):.3f}")
    if len(rows) > 2:
        print(f"Pearson r (confidence, top grade): "
              f"{statistics.correlation([c for c, _ in rows], [float(g) for _, g in rows]):.3f}")


if __name__ == "__main__":
    main()
