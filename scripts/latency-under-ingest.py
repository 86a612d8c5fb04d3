#!/usr/bin/env python3
"""Query latency while a bulk ingestion runs (issue 8: p95 under 3x its idle value).

Against a running doc-rag whose collection --collection already holds the dataset (e.g. after
`doc-rag eval --dataset ../shared/datasets/dbpedia-5k --collection dbp`):

  1. idle: every dataset query, --rounds times, one at a time (POST /v1/search, hybrid,
     Cache-Control: no-cache, each query made distinct per round so no cache can answer);
  2. busy: the whole corpus is uploaded again in one bulk request into --ingest-collection,
     and the same query loop runs until the batch is finished.

Prints p50/p95/p99 of both phases, the busy/idle ratios, how many queries ran during the
ingestion and its rate, and one JSON line. Standard library only; DOCRAG_TOKEN is the bearer
token (`doc-rag login`, then the access_token in ~/.config/doc-rag/credentials.json).

    python3 scripts/latency-under-ingest.py --dataset ../shared/datasets/dbpedia-5k --collection dbp
"""

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round((len(values) - 1) * p)))]


class Client:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None
        self.headers = {"Content-Type": "application/json"}
        token = os.environ.get("DOCRAG_TOKEN")
        if token:
            self.headers["Authorization"] = "Bearer " + token

    def request(self, method, path, body=None, headers=None, timeout=600):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        h = dict(self.headers, **(headers or {}))
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data, headers=h)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        if resp.status >= 400:
            raise RuntimeError("%s %s: %d %s" % (method, path, resp.status, payload[:300]))
        return json.loads(payload) if payload else None


def run_queries(client, queries, collection, top_k, tag, stop=None, rounds=1):
    latencies = []
    n = 0
    while True:
        for q in queries:
            if stop is not None and stop.is_set():
                return latencies
            body = {"query": "%s %s%d" % (q, tag, n), "top_k": top_k, "mode": "hybrid",
                    "collection": collection}
            t = time.perf_counter()
            client.request("POST", "/v1/search", body, {"Cache-Control": "no-cache"})
            latencies.append((time.perf_counter() - t) * 1000)
        n += 1
        if stop is None and n >= rounds:
            return latencies


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--collection", required=True, help="the loaded collection the queries search")
    ap.add_argument("--ingest-collection", default="ingest-load")
    ap.add_argument("--rounds", type=int, default=4, help="idle passes over the queries")
    ap.add_argument("--top-k", type=int, default=10)
    a = ap.parse_args()

    queries = [json.loads(l)["text"] for l in open(os.path.join(a.dataset, "queries.jsonl"))]
    docs = [json.loads(l) for l in open(os.path.join(a.dataset, "corpus.jsonl"))]
    client = Client(a.url)
    run_queries(client, queries[:5], a.collection, a.top_k, "warm")
    idle = run_queries(client, queries, a.collection, a.top_k, "idle", rounds=a.rounds)

    ndjson = "\n".join(json.dumps({"title": d.get("title", ""), "text": d["text"],
                                   "metadata": {"source_id": d["_id"]}}) for d in docs).encode()
    uploader = Client(a.url)
    started = time.perf_counter()
    batch = uploader.request(
        "POST", "/v1/documents/bulk?collection=" + urllib.parse.quote(a.ingest_collection), ndjson,
        {"Content-Type": "application/x-ndjson"})
    stop = threading.Event()
    state = {}

    def watch():
        while True:
            b = uploader.request("GET", "/v1/batches/%s" % batch["batch_id"])
            if b.get("finished"):
                state["secs"] = time.perf_counter() - started
                state["batch"] = b.get("counts", {})
                stop.set()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    busy = run_queries(client, queries, a.collection, a.top_k, "busy", stop=stop)
    watcher.join()

    summary = {
        "idle_queries": len(idle), "busy_queries": len(busy),
        "idle_p50_ms": round(percentile(idle, 0.5), 2), "idle_p95_ms": round(percentile(idle, 0.95), 2),
        "idle_p99_ms": round(percentile(idle, 0.99), 2),
        "busy_p50_ms": round(percentile(busy, 0.5), 2), "busy_p95_ms": round(percentile(busy, 0.95), 2),
        "busy_p99_ms": round(percentile(busy, 0.99), 2),
        "ingest_docs": batch.get("accepted"), "ingest_secs": round(state["secs"], 1),
        "ingest_docs_per_s": round(batch.get("accepted", 0) / state["secs"], 1),
        "batch": state["batch"],
    }
    summary["p95_busy_over_idle"] = round(summary["busy_p95_ms"] / summary["idle_p95_ms"], 2)
    summary["p50_busy_over_idle"] = round(summary["busy_p50_ms"] / summary["idle_p50_ms"], 2)
    for k in ("idle", "busy"):
        print("%-5s  n=%-5d p50 %7.2f ms  p95 %7.2f ms  p99 %7.2f ms" % (
            k, summary[k + "_queries"], summary[k + "_p50_ms"], summary[k + "_p95_ms"], summary[k + "_p99_ms"]),
            file=sys.stderr)
    print("p95 busy/idle %.2f; ingestion %d docs in %.1f s (%.1f docs/s)" % (
        summary["p95_busy_over_idle"], summary["ingest_docs"], summary["ingest_secs"],
        summary["ingest_docs_per_s"]), file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
