# doc-rag — the two commands a newcomer needs:
#   make run    fetch the model files, build, migrate and serve on embedded defaults (data in ./data)
#   make test   everything CI runs: formatting, lints, unit and integration tests
#
# Builds go to a target dir outside the clone so every clone (and CI) reuses the same compiled
# dependencies.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/doc-rag-target
export DOCRAG_MODELS_DIR ?= $(CURDIR)/models
CARGO ?= cargo

.PHONY: run test models llm build release lint fmt check-services bench eval clean-data fuzz fuzz-smoke schemathesis ops-check runbook-check

models:
	bash scripts/fetch-models.sh "$(DOCRAG_MODELS_DIR)"

# A real local inference server for tests/generation.rs: llama-cpp-python (built from source,
# ~12 minutes on 2 cores, once) and Gemma 3 270M, in ~/.cache/doc-rag/llm. `make test` installs it
# unless DOCRAG_SKIP_LLM=1; without it the real-model test prints "skipped" and passes.
llm:
	bash scripts/fetch-llm.sh

build:
	$(CARGO) build --locked

# A release names its commit in build_info{git_sha} (/metrics).
release:
	DOCRAG_GIT_SHA="$$(git rev-parse HEAD 2>/dev/null || echo unknown)" $(CARGO) build --locked --release

# The dev profile compiles every dependency with full optimisation (Cargo.toml), so the model,
# tokenizer and vector engine run at release speed, and `make run` reuses what `make test` built.
# Production images use `make release` (see Dockerfile).
run: models build
	DOCRAG__EMBEDDER__MODEL_DIR="$(DOCRAG_MODELS_DIR)" $(CARGO_TARGET_DIR)/debug/doc-rag serve

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --locked --all-targets -- -D warnings

check-services:
	bash scripts/ensure-services.sh

test: models check-services fmt lint
	@if [ -n "$$DOCRAG_SKIP_LLM" ]; then echo "skipped: make llm (DOCRAG_SKIP_LLM is set)"; else $(MAKE) llm; fi
	@[ -n "$$DOCRAG_TEST_QDRANT_URL" ] || echo "skipped: Qdrant server suites (tests/vectors.rs, search across replicas in tests/mongo.rs): set DOCRAG_TEST_QDRANT_URL=http://host:6334 to run them"
	DOCRAG__EMBEDDER__MODEL_DIR="$(DOCRAG_MODELS_DIR)" $(CARGO) test --locked --lib --bins --tests -- --test-threads=2
	# Benches run once each as smoke tests; Criterion's command line takes no libtest flags.
	DOCRAG__EMBEDDER__MODEL_DIR="$(DOCRAG_MODELS_DIR)" $(CARGO) test --locked --benches
	$(MAKE) schemathesis fuzz-smoke ops-check runbook-check

# The operations kit (issue 9): Prometheus config, alert rules and their unit tests, Grafana
# dashboards, nginx -t, both compose files, the Kubernetes manifests and the Dockerfile, checked
# with promtool, nginx, docker compose and kubernetes-validate (installed when missing).
ops-check:
	bash scripts/check-ops.sh

# The runbook and troubleshooting guide against the code: every `doc-rag` command and flag (the
# built binary's --help), every curl path (the routes in src/), every PromQL metric (the names in
# src/), every repository path, every link, and the alerts' runbook_url anchors.
runbook-check: build
	DOCRAG_BIN="$(CARGO_TARGET_DIR)/debug/doc-rag" python3 scripts/check-runbook.py

# Generated requests from /openapi.json against a running doc-rag: no 5xx on any of them.
schemathesis:
	python3 scripts/schemathesis.py --binary "$(CARGO_TARGET_DIR)/debug/doc-rag" --models "$(DOCRAG_MODELS_DIR)"

# Fuzzing (cargo-fuzz, libFuzzer) of the HTML, Markdown and PDF parsers and the chunker. The smoke
# run in `make test` is short and seeded, so it is repeatable; a longer hunt:
#   make fuzz FUZZ_RUNS=-1 FUZZ_SECS=600
# The fuzz crate compiles only the parsing code, into its own target dir (instrumented builds
# cannot share artefacts with the service's).
FUZZ_TARGET_DIR ?= $(HOME)/.cache/doc-rag-fuzz-target
FUZZ_TARGETS ?= parse_pdf parse_html parse_markdown chunker
FUZZ_RUNS ?= 50000
FUZZ_SECS ?= 20
CARGO_FUZZ_VERSION = 0.13.2

fuzz-smoke fuzz: models
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$t"; \
	  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$(FUZZ_TARGET_DIR)" DOCRAG_MODELS_DIR="$(DOCRAG_MODELS_DIR)" \
	    $(CARGO) fuzz run --fuzz-dir tests/fuzz -O $$t -- \
	      -seed=1 -runs=$(FUZZ_RUNS) -max_total_time=$(FUZZ_SECS) -rss_limit_mb=2048 -max_len=65536 \
	      || exit 1; \
	done

clean-data:
	rm -rf ./data
