#!/usr/bin/env python3
"""Property-based API testing: schemathesis generates requests from doc-rag's own /openapi.json
and fails on any 5xx answer (check `not_a_server_error`).

    python3 scripts/schemathesis.py --binary ~/.cache/doc-rag-target/debug/doc-rag \
        --models ./models [--examples 25]

It starts doc-rag on free ports with a temporary data dir, creates an admin API key, and runs
`st run` with a fixed seed, so a run is repeatable. It installs schemathesis from PyPI when `st`
is missing. Exits non-zero when schemathesis found a failure.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

MODULES = ["api", "security", "query", "response", "embedder", "storage"]
ST_VERSION = "4.32.5"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, token=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--examples", type=int, default=25)
    a = p.parse_args()

    st = shutil.which("st")
    if st is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        f"schemathesis=={ST_VERSION}"], check=True)
        st = shutil.which("st") or os.path.join(os.path.dirname(sys.executable), "st")

    ports = {m: free_port() for m in MODULES}
    data = tempfile.mkdtemp(prefix="doc-rag-schemathesis-")
    password = "schemathesis-admin-password"
    cmd = [a.binary, "serve", "--data-dir", data, "--log-format", "json",
           "--set", f"embedder.model_dir={a.models}",
           "--set", "security.admin_email=admin@schemathesis.test",
           "--set", f"security.admin_password={password}",
           "--set", "api.bind=127.0.0.1",
           # Generated requests come fast from one address; limits are not under test here.
           "--set", "security.rate_limit_auth_ip=",
           "--set", "log.level=warn"]
    for m, port in ports.items():
        cmd += ["--set", f"{m}.port={port}"]
    log = open(os.path.join(data, "server.log"), "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{ports['api']}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{api}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None:
                sys.exit("doc-rag exited at start-up; see " + log.name)
            time.sleep(0.5)
        token = post(f"{api}/v1/auth/login",
                     {"email": "admin@schemathesis.test", "password": password})["access_token"]
        key = post(f"{api}/v1/api-keys", {"name": "schemathesis", "role": "admin"}, token)["key"]
        run = [st, "run", f"{api}/openapi.json",
               "--checks", "not_a_server_error",
               "--max-examples", str(a.examples),
               "--seed", "1",
               "--request-timeout", "60",
               "-H", f"Authorization: Bearer {key}",
               # Logging out or disabling the admin mid-run would only turn the rest into 401s.
               "--exclude-path-regex", "^/v1/(auth/logout|admin/sessions)"]
        print("+", " ".join(run[:3]), "...", flush=True)
        result = subprocess.run(run)
        if server.poll() is not None:
            sys.exit("doc-rag died during the run; see " + log.name)
        return result.returncode
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        if os.environ.get("KEEP_DATA") is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
