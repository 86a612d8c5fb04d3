#!/usr/bin/env python3
"""Disk use of a doc-rag data dir after ingesting a BEIR corpus and then deleting all of it.

Against a running server (embedded stores, so the data dir is local):

    python3 scripts/ingest-delete-disk.py --url http://127.0.0.1:8080 \
        --storage-url http://127.0.0.1:8083 --token "$DOCRAG_TOKEN" \
        --data-dir ./data --dataset ../shared/datasets/dbpedia-5k

It reports the data dir's size before, after ingesting and after deleting (once the deletion
sweeper and the idle-time maintenance have run: vacuum, WAL pruning, SQLite checkpoint). It also
reports how many sampled deleted texts and titles `grep -r` still finds in the data dir.
Standard library only.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request


def call(method, url, token, body=None, timeout=120):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for attempt in range(50):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            if e.code in (429, 503):
                time.sleep(float(e.headers.get("Retry-After", "1")))
                continue
            return e.code, json.loads(e.read() or b"null")
    raise RuntimeError(f"{method} {url}: still overloaded after 50 tries")


def du(path):
    """Bytes the files occupy on disk (allocated blocks; the engine's files are sparse) and
    their apparent size."""
    used = apparent = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            used += st.st_blocks * 512
            apparent += st.st_size
    return {"disk": used, "apparent": apparent}


def grep_count(needle, path):
    r = subprocess.run(["grep", "-r", "-a", "-l", "-F", needle, path],
                       capture_output=True, text=True)
    return len([l for l in r.stdout.splitlines() if l.strip()])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--storage-url", default="http://127.0.0.1:8083")
    p.add_argument("--token", default=os.environ.get("DOCRAG_TOKEN", ""))
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--limit", type=int, default=0, help="documents to use (0: all)")
    p.add_argument("--settle-secs", type=int, default=120,
                   help="how long to wait for maintenance after the deletes")
    a = p.parse_args()

    docs = []
    with open(os.path.join(a.dataset, "corpus.jsonl")) as f:
        for line in f:
            d = json.loads(line)
            docs.append(d)
            if a.limit and len(docs) >= a.limit:
                break
    report = {"documents": len(docs), "bytes_start": du(a.data_dir)}

    started = time.time()
    jobs = []
    for d in docs:
        s, body = call("POST", f"{a.url}/v1/documents", a.token, {
            "title": d.get("title") or d["_id"], "text": d["text"],
            "metadata": {"source_id": d["_id"]}})
        if s != 202:
            sys.exit(f"upload failed: {s} {body}")
        jobs.append((body["job_id"], body["document_id"]))
    for job_id, _ in jobs:
        while True:
            s, job = call("GET", f"{a.url}/v1/jobs/{job_id}", a.token)
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
    report["ingest_secs"] = round(time.time() - started, 1)
    time.sleep(40)  # let the idle-time maintenance run once
    report["bytes_after_ingest"] = du(a.data_dir)
    _, stats = call("GET", f"{a.storage_url}/v1/stats", a.token)
    report["stats_after_ingest"] = {k: stats[k] for k in ("documents", "chunks", "vectors")}

    started = time.time()
    removed = {"chunks": 0, "vectors": 0}
    for _, doc_id in jobs:
        s, body = call("DELETE", f"{a.url}/v1/documents/{doc_id}", a.token)
        if s != 200:
            sys.exit(f"delete failed: {s} {body}")
        for k in removed:
            removed[k] += body["removed"][k]
    report["delete_secs"] = round(time.time() - started, 1)
    report["removed"] = removed

    deadline = time.time() + a.settle_secs
    while time.time() < deadline:
        _, stats = call("GET", f"{a.storage_url}/v1/stats", a.token)
        if stats["documents"] == 0 and stats["vectors"] == 0:
            break
        time.sleep(2)
    report["stats_after_delete"] = {k: stats[k] for k in ("documents", "chunks", "vectors")}
    report["bytes_right_after_delete"] = du(a.data_dir)
    time.sleep(min(70, max(0, deadline - time.time())))  # vacuum + WAL pruning + checkpoint
    report["bytes_after_maintenance"] = du(a.data_dir)
    _, verify = call("POST", f"{a.storage_url}/v1/admin/verify", a.token)
    report["verify_ok"] = verify["ok"]

    # Distinctive pieces of deleted documents: a 60-character slice of the text, and the title.
    samples = docs[:: max(1, len(docs) // 20)][:20]
    report["grep_text_hits"] = sum(
        grep_count(d["text"][:60], a.data_dir) > 0 for d in samples if len(d["text"]) >= 60)
    report["grep_title_hits"] = sum(
        grep_count(d["title"], a.data_dir) > 0 for d in samples if len(d.get("title", "")) >= 12)
    report["grep_samples"] = len(samples)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
