# lifeline — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export KUBECONFIG ?= $(CURDIR)/target/testenv/kubeconfig
CARGO ?= cargo
# sim: the fake kubelet (default, fast). real: a real kubelet, containerd, runc and CNI.
NODE ?= sim
VERSION := $(shell awk -F'"' '/^version *=/ {print $$2; exit}' Cargo.toml)

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

.PHONY: audit
audit: ## Dependency audit: licenses, bans and sources with cargo deny (see deny.toml)
	$(CARGO) deny --log-level error check licenses bans sources

.PHONY: testenv-up
testenv-up: ## Start the local control plane (idempotent); NODE=real adds a real node (target/testenv-real/)
	@NODE=$(NODE) tests/testenv/up.sh

.PHONY: testenv-down
testenv-down: ## Stop both local control planes (simulated and real node) and remove what they made
	@NODE=real tests/testenv/down.sh
	@NODE=sim tests/testenv/down.sh

.PHONY: testenv-status
testenv-status: ## Show the local control plane's processes and health (NODE=real for the real node)
	@NODE=$(NODE) tests/testenv/status.sh

.PHONY: image
image: ## Build the lifeline image without a daemon -> target/image/lifeline-$(VERSION).oci.tar
	@scripts/image.sh build lifeline

.PHONY: image-context
image-context: ## Prepare the context for `docker build -f Containerfile target/image/lifeline/context`
	@scripts/image.sh context lifeline

.PHONY: images-test
images-test: ## Build the test images (sipp, kamailio, pause) and the lifeline upgrade tag
	@for i in sipp kamailio pause; do scripts/image.sh build $$i; done
	@scripts/image.sh build lifeline $(VERSION)-upgrade

.PHONY: release
release: tools image ## Image (OCI archive), packaged chart, CRD bundle, SHA256SUMS -> target/release/artifacts/
	@scripts/release.sh

.PHONY: test-real-node
test-real-node: deps tools release images-test ## The real-node layer alone: real_node and the pod replay (each starts and stops its own plane)
	$(CARGO) test --test real_node --test real_node_takeover --test e2e_cluster -- --nocapture

.PHONY: test-unit
test-unit: ## Unit and property tests (no cluster needed)
	$(CARGO) test --lib --bins

.PHONY: test
test: deps tools release images-test testenv-up ## All tests: unit, control plane, Kamailio and sipp end-to-end, real node
	tests/testenv/smoke.sh
	$(CARGO) test --lib --bins --tests -- --test-threads=2

.PHONY: bench
bench: deps testenv-up ## Run the benchmarks (figures printed as medians and ratios)
	$(CARGO) bench

.PHONY: demo
demo: deps testenv-up ## The carrier-outage replay on loopback processes (fast; no images)
	@python3 scripts/demo.py

.PHONY: demo-cluster
demo-cluster: deps tools release images-test ## The same replay with every part as a pod on the real node (root)
	@NODE=real tests/testenv/up.sh
	@python3 scripts/demo_cluster.py

.PHONY: clean
clean: ## Stop the control planes and remove build output
	-@NODE=real tests/testenv/down.sh
	-@tests/testenv/down.sh
	$(CARGO) clean
