# lifeline — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export KUBECONFIG ?= $(CURDIR)/target/testenv/kubeconfig
CARGO ?= cargo

.PHONY: help
help: ## List every target
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install the Debian packages tests and the demo need (kamailio, sipp, lua, promtool)
	@scripts/install-deps.sh

.PHONY: tools
tools: ## Build helm and kube-score from their Go modules into target/tools/bin (cached)
	@scripts/tools.sh

.PHONY: build
build: ## Build the lifeline binary (debug)
	$(CARGO) build --bins

.PHONY: crds
crds: ## Regenerate crds/ from the Rust types
	@mkdir -p crds
	$(CARGO) run -q --bin lifeline -- crds > crds/lifeline.dev.yaml

.PHONY: crds-check
crds-check: ## Fail when the committed crds/ differ from a regeneration
	@$(CARGO) run -q --bin lifeline -- crds | diff -u crds/lifeline.dev.yaml - \
	  || { echo "crds/ is stale: run 'make crds' and commit the result"; exit 1; }

.PHONY: fmt
fmt: ## Format the Rust code
	$(CARGO) fmt

.PHONY: lint
lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

.PHONY: testenv-up
testenv-up: ## Start the local control plane (idempotent); kubeconfig in target/testenv/
	@tests/testenv/up.sh

.PHONY: testenv-down
testenv-down: ## Stop the local control plane and remove its data
	@tests/testenv/down.sh

.PHONY: testenv-status
testenv-status: ## Show the local control plane's processes and health
	@tests/testenv/status.sh

.PHONY: test-unit
test-unit: ## Unit and property tests (no cluster needed)
	$(CARGO) test --lib --bins

.PHONY: test
test: deps tools testenv-up ## All tests: unit, control plane, Kamailio and sipp end-to-end
	tests/testenv/smoke.sh
	$(CARGO) test --lib --bins --tests -- --test-threads=2

.PHONY: bench
bench: deps testenv-up ## Run the benchmarks (figures printed as medians and ratios)
	$(CARGO) bench

.PHONY: demo
demo: deps testenv-up ## The carrier-outage replay on an embedded control plane
	@python3 scripts/demo.py

.PHONY: clean
clean: ## Stop the control plane and remove build output
	-@tests/testenv/down.sh
	$(CARGO) clean
