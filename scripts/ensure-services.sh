#!/usr/bin/env bash
# Makes sure the PostgreSQL and Redis the test suite talks to are answering, starting them when
# they are installed but stopped, and that SecantusDB (the MongoDB the tests start) is installed. Tests use postgres://postgres@127.0.0.1:5432/test unless
# DOCRAG_TEST_POSTGRES_URL says otherwise.
set -euo pipefail

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up || { echo "services: PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }

if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
  fi
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
fi
redis_up || { echo "services: Redis is not answering on 127.0.0.1:6379" >&2; exit 1; }
echo "services: PostgreSQL and Redis answer"

# MongoDB is not installable here: the tests start SecantusDB (a MongoDB-wire-compatible server
# from PyPI) on ports of their own, from this venv.
venv="${DOCRAG_VENV:-$HOME/.cache/doc-rag-venv}"
secantus_version="0.7.0b3"
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('SecantusDB') != '$secantus_version')" 2>/dev/null; then
  echo "services: installing SecantusDB==$secantus_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "SecantusDB==$secantus_version"
fi
# PyYAML: tests/ops.rs reads the alert rules through scripts/check-ops.py.
"$venv/bin/python" -c 'import yaml' 2>/dev/null || "$venv/bin/pip" install --quiet PyYAML
[ -x "$venv/bin/secantusd-py" ] || { echo "services: $venv/bin/secantusd-py is missing" >&2; exit 1; }
echo "services: SecantusDB $secantus_version in $venv (MongoDB suites)"

# S3 is not installable here either: the backup suite puts backups into moto's S3-compatible
# server (PyPI `moto[server]`), started on a port of its own.
moto_version="5.2.5"
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$moto_version')" 2>/dev/null \
   || ! "$venv/bin/python" -c 'import flask' 2>/dev/null; then
  echo "services: installing moto[server]==$moto_version into $venv"
  "$venv/bin/pip" install --quiet "moto[server]==$moto_version"
fi
echo "services: moto $moto_version in $venv (S3 backups)"
