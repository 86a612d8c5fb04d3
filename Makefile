# doc-rag — the two commands a newcomer needs:
#   make run    fetch the model files, build, migrate and serve on embedded defaults (data in ./data)
#   make test   everything CI runs: formatting, lints, unit and integration tests
#
# Builds go to a target dir outside the clone so every clone (and CI) reuses the same compiled
# dependencies.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/doc-rag-target
export DOCRAG_MODELS_DIR ?= $(CURDIR)/models
CARGO ?= cargo

.PHONY: run test models build release lint fmt check-services bench eval clean-data

models:
	bash scripts/fetch-models.sh "$(DOCRAG_MODELS_DIR)"

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

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
	DOCRAG__EMBEDDER__MODEL_DIR="$(DOCRAG_MODELS_DIR)" $(CARGO) test --locked --all-targets -- --test-threads=2

clean-data:
	rm -rf ./data
