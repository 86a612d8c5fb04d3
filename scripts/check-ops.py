"""Static checks of the operations kit that no off-the-shelf tool does; run by scripts/check-ops.sh.

  python check-ops.py CHECK [ARGS]     (with PyYAML: the venv check-ops.sh sets up)

Checks (one per invocation, exit status 1 with the reasons on failure):
  contract           every metric in the alert rules and the dashboards is in doc-rag's metric
                     contract (METRICS below), or node_*/pg_* from the exporters (alerts and the
                     system dashboard only), or `up`
  alerts BASE        every alert has severity, summary, description and a runbook_url under BASE;
                     every alert has a firing and a not-firing case in docker/prometheus/tests/
  dashboard-rules F  writes every dashboard query, Grafana variables replaced, as a rule file F for
                     `promtool check rules` (PromQL syntax)
  dashboards         the four dashboards: valid JSON, uids main/system/security/business, titles,
                     unique panel ids, every query on a provisioned data source
  compose            both compose files: the expected services, pinned images, the mounts and
                     settings the monitoring stack depends on
  k8s VERSION        deploy/k8s: kustomization lists every manifest, image tag = VERSION (Cargo.toml),
                     never `latest`
  dockerfile         multi-stage, non-root USER, HEALTHCHECK on /ready at 8080, OCI labels from
                     build args, model files in the image
  anchors BASE       prints the runbook anchors the alerts use
  used-metrics       prints every doc-rag metric the alerts and dashboards read, one per line
                     (histogram suffixes removed; exporters' and Prometheus' own left out), for
                     tests/ops.rs to find in a live scrape
"""

import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from promql import KEYWORDS, metric_names  # noqa: E402,F401

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROM = os.path.join(ROOT, "docker", "prometheus")
GRAFANA = os.path.join(ROOT, "docker", "grafana")
K8S = os.path.join(ROOT, "deploy", "k8s")

# doc-rag's metric contract (issue 9): what dashboards and alerts may use.
METRICS = {
    # HTTP
    "http_requests_total", "http_request_duration_seconds",
    # dependencies and the database pool
    "dependency_up", "dependency_errors_total",
    "db_pool_connections", "db_pool_idle_connections", "db_pool_max_connections",
    # embedder
    "embedder_batch_seconds", "embedder_texts_total", "embedder_rejected_total",
    "embedder_batch_size", "embedder_queue_wait_seconds",
    # ingestion and parsing
    "ingest_documents_submitted_total", "ingest_batches_submitted_total", "ingest_documents_total",
    "ingest_chunks_total", "ingest_job_seconds", "ingest_jobs_postponed_total",
    "ingest_uploads_rejected_total", "ingest_worker_restarts_total", "ingest_documents_deleted_total",
    "parser_killed_total", "parser_workers_started_total",
    "ingest_queue_depth", "ingest_oldest_queued_job_age_seconds", "ingest_jobs_failed_total",
    "ingest_stage_seconds",
    # query and response
    "query_search_seconds", "query_cache_total", "response_answer_seconds",
    "query_answer_confidence", "query_requests_total", "response_answers_total",
    "response_streams_cancelled_total",
    # the language model (issue 11)
    "llm_requests_total", "llm_generation_seconds", "llm_first_token_seconds",
    # vectors
    "vector_points", "vector_index_disk_bytes",
    # process and build
    "build_info", "process_cpu_seconds_total", "process_resident_memory_bytes",
    "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
    "process_start_time_seconds", "data_dir_free_bytes", "data_dir_total_bytes",
    # security
    "auth_login_failures_total", "auth_logins_total", "security_rejected_requests_total",
    # backups (issue 10) and feedback (issue 11)
    "backup_last_success_timestamp_seconds", "backup_duration_seconds", "backup_size_bytes",
    "backups_total", "feedback_total",
    # webhooks
    "webhook_deliveries_total", "webhook_deliveries_pending", "webhook_subscriptions_disabled_total",
    "webhook_worker_restarts_total",
    # Prometheus itself
    "up",
}
HISTOGRAMS = {
    "http_request_duration_seconds", "embedder_batch_seconds", "ingest_job_seconds",
    "query_search_seconds", "response_answer_seconds", "ingest_stage_seconds",
    "embedder_batch_size", "embedder_queue_wait_seconds", "query_answer_confidence",
    "llm_generation_seconds", "llm_first_token_seconds",
}
EXPORTER_PREFIXES = ("node_", "pg_")
DASHBOARD_UIDS = {"main", "system", "security", "business"}

errors = []


def error(msg):
    errors.append(msg)


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def grafana_vars(expr):
    """A dashboard query with Grafana's variables replaced by values PromQL accepts."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_:]*\}|\$[A-Za-z_][A-Za-z0-9_]*", ".*", expr)
    return expr


def allowed(name, exporters):
    if name in METRICS:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return True
    return exporters and name.startswith(EXPORTER_PREFIXES)


def alert_rules():
    doc = load_yaml(os.path.join(PROM, "alerts.yml"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield rule


def dashboards():
    for uid in sorted(DASHBOARD_UIDS):
        path = os.path.join(GRAFANA, "dashboards", uid + ".json")
        with open(path) as f:
            yield uid, path, json.load(f)


def panels(dash):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])  # collapsed rows


def dashboard_queries(dash):
    """(where, PromQL) for every panel target and every query variable."""
    for p in panels(dash):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield f'panel {p.get("id")} "{p.get("title")}"', t["expr"]
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)\s*", q or "")
        if m:
            yield f'variable {v["name"]}', m.group(1)
        elif q:
            yield f'variable {v["name"]}', q


def check_contract():
    n = 0
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            n += 1
            if not allowed(name, exporters=True):
                error(f'alerts.yml {rule.get("alert")}: metric {name} is not in the metric contract')
    for uid, path, dash in dashboards():
        for where, expr in dashboard_queries(dash):
            for name in metric_names(grafana_vars(expr)):
                n += 1
                if not allowed(name, exporters=(uid == "system")):
                    error(f"{uid}.json {where}: metric {name} is not in the metric contract")
    if not errors:
        print(f"metric contract: {n} metric references, all in the contract")


def check_alerts(base):
    names = []
    for rule in alert_rules():
        name = rule.get("alert")
        if not name:
            error(f"alerts.yml: a rule without `alert` ({rule.get('record')}): recording rules would "
                  "put names outside the metric contract into dashboards")
            continue
        names.append(name)
        sev = rule.get("labels", {}).get("severity")
        if sev not in ("critical", "warning"):
            error(f"{name}: severity {sev!r} is not critical or warning")
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                error(f"{name}: no {key} annotation")
        url = ann.get("runbook_url", "")
        if not re.fullmatch(re.escape(base) + r"#[a-z0-9][a-z0-9-]*", url):
            error(f"{name}: runbook_url {url!r} is not {base}#<anchor>")
    if len(set(names)) != len(names):
        error("alerts.yml: duplicate alert names")
    firing, quiet = set(), set()
    for path in sorted(glob.glob(os.path.join(PROM, "tests", "*.yml"))):
        for test in load_yaml(path).get("tests", []):
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
                for alert in case.get("exp_alerts") or []:
                    url = (alert.get("exp_annotations") or {}).get("runbook_url", "")
                    if not url.startswith(base + "#"):
                        error(f"{os.path.basename(path)}: {case['alertname']}: runbook_url {url!r} not under {base}")
    for name in names:
        if name not in firing:
            error(f"{name}: no test case where it fires")
        if name not in quiet:
            error(f"{name}: no test case where it stays quiet")
    for name in (firing | quiet) - set(names):
        error(f"tests name an alert that alerts.yml does not have: {name}")
    if not errors:
        print(f"alerts: {len(names)} alerts, each with severity, summary, description, runbook_url, "
              "and a firing and a quiet test case")


def write_dashboard_rules(out):
    rules = []
    for uid, path, dash in dashboards():
        for i, (where, expr) in enumerate(dashboard_queries(dash)):
            rules.append({"record": f"dashboard_{uid}:query_{i}", "expr": grafana_vars(expr)})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)
    print(f"dashboard queries: {len(rules)} written to {out}")


def check_dashboards():
    ds = load_yaml(os.path.join(GRAFANA, "provisioning", "datasources", "datasources.yml"))
    ds_uids = {d["uid"]: d["type"] for d in ds.get("datasources", [])}
    prov = load_yaml(os.path.join(GRAFANA, "provisioning", "dashboards", "dashboards.yml"))
    if not prov.get("providers"):
        error("dashboards.yml: no dashboard provider")
    files = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(GRAFANA, "dashboards", "*.json"))}
    if files != DASHBOARD_UIDS:
        error(f"docker/grafana/dashboards/ holds {sorted(files)}, expected {sorted(DASHBOARD_UIDS)}")
    seen = set()
    for uid, path, dash in dashboards():
        if dash.get("uid") != uid:
            error(f"{path}: uid {dash.get('uid')!r}, expected {uid!r} (the runbook's /d/{uid})")
        seen.add(dash.get("uid"))
        if not dash.get("title"):
            error(f"{path}: no title")
        ids = [p.get("id") for p in panels(dash)]
        if len(ids) != len(set(ids)) or None in ids:
            error(f"{path}: panel ids missing or not unique")
        for p in panels(dash):
            if p.get("type") == "row":
                continue
            if not p.get("targets"):
                error(f"{path}: panel {p.get('title')!r} has no query")
            for t in p.get("targets", []):
                uid_ = (t.get("datasource") or p.get("datasource") or {}).get("uid")
                if uid_ not in ds_uids:
                    error(f"{path}: panel {p.get('title')!r} uses data source {uid_!r}, not provisioned")
                if not t.get("expr"):
                    error(f"{path}: panel {p.get('title')!r} has an empty query")
    if not errors:
        print(f"dashboards: {sorted(seen)} valid, every query on a provisioned data source")


def services(path):
    return load_yaml(path).get("services", {})


def check_compose():
    prod = services(os.path.join(ROOT, "docker", "docker-compose.production.yml"))
    mon_doc = load_yaml(os.path.join(ROOT, "docker", "docker-compose.monitoring.yml"))
    mon = mon_doc.get("services", {})
    for name in ("nginx", "api", "postgres", "redis", "mongodb", "qdrant"):
        if name not in prod:
            error(f"docker-compose.production.yml: no service {name}")
    for name in ("prometheus", "grafana", "jaeger", "node-exporter", "postgres-exporter", "postgres"):
        if name not in mon:
            error(f"docker-compose.monitoring.yml: no service {name}")
    for name, svc in mon.items():
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            error(f"docker-compose.monitoring.yml: {name}: image {image!r} is not pinned")
    if mon_doc.get("name") != load_yaml(os.path.join(ROOT, "docker", "docker-compose.production.yml")).get("name"):
        error("the two compose files have different project names")
    pg = mon.get("postgres", {})
    cmd = pg.get("command") or []
    cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
    if "shared_preload_libraries=pg_stat_statements" not in cmd:
        error("monitoring postgres: not started with -c shared_preload_libraries=pg_stat_statements")
    for key in ("image", "container_name", "volumes", "secrets", "environment"):
        if key in prod.get("postgres", {}) and pg.get(key) != prod["postgres"][key]:
            error(f"monitoring postgres: {key} differs from the production file's, which it merges into")
    env = mon.get("jaeger", {}).get("environment", {})
    if str(env.get("COLLECTOR_OTLP_ENABLED")).lower() != "true":
        error("jaeger: COLLECTOR_OTLP_ENABLED is not true")
    for port in ("4317", "4318"):
        if port not in [str(p) for p in mon.get("jaeger", {}).get("expose", [])]:
            error(f"jaeger: OTLP port {port} not exposed")
    mounts = {}
    for name in ("prometheus", "grafana"):
        for v in mon.get(name, {}).get("volumes", []):
            src, dst = v.split(":")[:2]
            if src.startswith("."):
                mounts[dst] = src
                if not os.path.exists(os.path.join(ROOT, "docker", src)):
                    error(f"{name}: mounts {src}, which does not exist")
    prov = load_yaml(os.path.join(GRAFANA, "provisioning", "dashboards", "dashboards.yml"))
    for p in prov.get("providers", []):
        path = p.get("options", {}).get("path")
        if mounts.get(path) != "./grafana/dashboards":
            error(f"dashboards.yml reads {path}, where docker/grafana/dashboards is not mounted")
    secrets = prod.get("api", {}).get("secrets", [])
    if "metrics_token" not in secrets:
        error("production api: no metrics_token secret, so Prometheus cannot scrape it")
    if not errors:
        print("compose: production and monitoring services present, images pinned, mounts and settings consistent")


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', f.read(), re.M | re.S)
    return m.group(1)


def check_k8s(k8s_version):
    version = cargo_version()
    manifests = sorted(os.path.basename(p) for p in glob.glob(os.path.join(K8S, "*.yaml")))
    kust = load_yaml(os.path.join(K8S, "kustomization.yaml"))
    listed = set(kust.get("resources", []))
    for m in manifests:
        if m != "kustomization.yaml" and m not in listed:
            error(f"kustomization.yaml does not list {m}")
    for m in listed:
        if m not in manifests:
            error(f"kustomization.yaml lists {m}, which does not exist")
    kinds = {}
    for m in manifests:
        if m == "kustomization.yaml":
            continue
        with open(os.path.join(K8S, m)) as f:
            text = f.read()
        if re.search(r"image:\s*\S+:latest\b", text):
            error(f"{m}: an image tagged latest")
        for doc in yaml.safe_load_all(text):
            if doc:
                kinds.setdefault(doc["kind"], []).append(doc)
    for kind in ("Namespace", "Deployment", "Service", "ConfigMap", "Secret",
                 "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        if kind not in kinds:
            error(f"deploy/k8s: no {kind}")
    for dep in kinds.get("Deployment", []):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            if c["image"] != f"doc-rag/api:{version}":
                error(f"{dep['metadata']['name']}: image {c['image']}, expected doc-rag/api:{version} (Cargo.toml)")
    for img in kust.get("images", []):
        if img.get("name") == "doc-rag/api" and str(img.get("newTag")) != version:
            error(f"kustomization.yaml: doc-rag/api tag {img.get('newTag')}, expected {version} (Cargo.toml)")
    if not errors:
        print(f"k8s: {len(manifests) - 1} manifests listed in kustomization.yaml, image doc-rag/api:{version}, "
              f"validated for Kubernetes {k8s_version}")


def check_dockerfile():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    if len(froms) < 2:
        error("Dockerfile: not multi-stage")
    final = lines[lines.index(froms[-1]):]
    users = [l.split()[1] for l in final if l.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        error("Dockerfile: the final stage does not run as a non-root USER")
    hc = [l for l in final if l.upper().startswith("HEALTHCHECK ")]
    if not hc or "/ready" not in hc[-1] or ":8080" not in hc[-1]:
        error("Dockerfile: no HEALTHCHECK on /ready at port 8080")
    args = {l.split()[1].split("=")[0] for l in final if l.upper().startswith("ARG ")}
    labels = " ".join(l for l in final if l.upper().startswith("LABEL "))
    for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("source", "SOURCE")):
        if not re.search(rf"org\.opencontainers\.image\.{key}=\"?\$\{{?{arg}\}}?", labels):
            error(f"Dockerfile: no label org.opencontainers.image.{key} from ${arg}")
        if arg not in args:
            error(f"Dockerfile: no ARG {arg} in the final stage")
    build = lines[: lines.index(froms[-1])]
    if not any(l.upper().startswith("RUN ") and re.search(r'DOCRAG_GIT_SHA="?\$\{?REVISION\b', l) for l in build):
        error("Dockerfile: the build stage does not compile REVISION in (DOCRAG_GIT_SHA, build_info{git_sha})")
    if not any(l.upper().startswith("COPY ") and "/models" in l for l in final):
        error("Dockerfile: the model files are not copied into the image")
    if not errors:
        print("Dockerfile: multi-stage, non-root USER, HEALTHCHECK /ready:8080, OCI labels from build args, git sha compiled in, models baked in")


def print_anchors(base):
    anchors = {}
    for rule in alert_rules():
        url = rule.get("annotations", {}).get("runbook_url", "")
        anchors.setdefault(url[len(base) + 1:], []).append(rule["alert"])
    for anchor, names in anchors.items():
        print(f"  #{anchor}: {', '.join(names)}")


def used_metrics():
    exprs = [r["expr"] for r in alert_rules()]
    for _, _, dash in dashboards():
        exprs.extend(grafana_vars(q) for _, q in dashboard_queries(dash))
    names = set()
    for expr in exprs:
        for name in metric_names(str(expr)):
            if name == "up" or name.startswith(EXPORTER_PREFIXES):
                continue
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
                    name = name[: -len(suffix)]
            names.add(name)
    for name in sorted(names):
        print(name)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "used-metrics":
        used_metrics()
    elif cmd == "contract":
        check_contract()
    elif cmd == "alerts":
        check_alerts(args[0])
    elif cmd == "dashboard-rules":
        write_dashboard_rules(args[0])
    elif cmd == "dashboards":
        check_dashboards()
    elif cmd == "compose":
        check_compose()
    elif cmd == "k8s":
        check_k8s(args[0])
    elif cmd == "dockerfile":
        check_dockerfile()
    elif cmd == "anchors":
        print_anchors(args[0])
    else:
        sys.exit(f"unknown check {cmd}")
    if errors:
        for e in errors:
            print(f"  error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
