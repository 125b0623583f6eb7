# kong-watcher: build and test entry points. `make help` lists them.
SHELL := /usr/bin/env bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/kong-watcher/kong-watcher/internal/version.Version=$(VERSION)
BIN := bin

.PHONY: help
help: ## Show this help.
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

##@ Build

.PHONY: build
build: ## Build bin/kong-watcher-webhook and bin/kong-watcher-agent (static, BPF objects embedded).
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/kong-watcher-webhook ./cmd/webhook
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/kong-watcher-agent ./cmd/agent

.PHONY: generate
generate: ## Regenerate the bpf2go Go bindings and .o files (needs clang, bpftool).
	$(GO) generate ./bpf/...

.PHONY: manifests
manifests: ## Render config/default to stdout-checked YAML (kubectl kustomize).
	kubectl kustomize config/default > /dev/null
	@echo "config/default renders"

.PHONY: deps
deps: ## Install the Debian packages the tests need (when missing).
	hack/install-deps.sh

.PHONY: helm
helm: ## Build (or reuse) the helm CLI the chart tests use; prints its path.
	@hack/helm.sh

.PHONY: helm-test
helm-test: ## Lint charts/kong-watcher and compare its render with config/default (test/helm).
	KW_HELM="$$(hack/helm.sh | tail -1)" KW_REQUIRE_INTEGRATION=1 $(GO) test -count=1 -v ./test/helm

.PHONY: kong
kong: ## Build (or reuse) real Kong 3.8.1 and OpenResty 1.25.3.2/1.27.1.2 for test/integration (docs/kong.md).
	hack/kong.sh
	hack/openresty.sh 1.25.3.2
	hack/openresty.sh 1.27.1.2

.PHONY: k8s-binaries
k8s-binaries: ## Build (or reuse) kube-apiserver, kube-controller-manager and etcd for envtest.
	hack/k8s-binaries.sh

##@ Test

.PHONY: test
test: deps ## Run every test this machine can run: unit, envtest, root-only integration.
	KUBEBUILDER_ASSETS="$$(hack/k8s-binaries.sh | tail -1)" KW_HELM="$$(hack/helm.sh | tail -1)" \
	KW_KONG="$$(hack/kong.sh | tail -1)" \
	KW_OPENRESTY="$$(hack/openresty.sh 1.25.3.2 | tail -1):$$(hack/openresty.sh 1.27.1.2 | tail -1)" \
	KW_REQUIRE_INTEGRATION=1 \
		$(GO) test -count=1 -timeout 30m ./...

.PHONY: test-unit
test-unit: ## Unit tests only (no root, no API server).
	$(GO) test -count=1 -short ./...

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 20s each).
	hack/fuzz.sh $(or $(FUZZTIME),20s)

.PHONY: e2e
e2e: ## The whole story on a real local cluster (changes no file). KEEP=1 leaves it running.
	KEEP=$(KEEP) hack/e2e.sh

.PHONY: e2e-docs
e2e-docs: ## make e2e, and rewrite docs/e2e.md from the run when every step passed.
	KW_E2E_WRITE_DOCS=1 KEEP=$(KEEP) hack/e2e.sh

.PHONY: e2e-down
e2e-down: ## Stop the e2e cluster and remove everything it added to the host.
	hack/e2e-cluster.sh down

##@ Run and measure

.PHONY: demo
demo: ## Start the Kong-like gateway fixture, drive traffic, run the agent, show live stats.
	hack/demo.sh $(DEMO_ARGS)

.PHONY: bench
bench: build ## The agent's cost beside an empty uprobe's (the floor) on the fixture and real Kong; CPU, BPF time (prints only, ~18 min).
	hack/bench-agent.sh

.PHONY: bench-docs
bench-docs: build ## make bench, and rewrite the "## Agent" section of docs/benchmarks.md when the agent counted exactly.
	KW_BENCH_WRITE_DOCS=1 hack/bench-agent.sh

.PHONY: bench-webhook
bench-webhook: ## AdmissionReviews/s and p50/p99 of the real TLS endpoint (docs/benchmarks.md).
	KUBEBUILDER_ASSETS="$$(hack/k8s-binaries.sh | tail -1)" hack/bench-webhook.sh

.PHONY: bench-manager
bench-manager: ## 1,000 agents' reports every 30 s on 2 manager replicas: CPU, RSS, API-server writes, p99 (prints only).
	KUBEBUILDER_ASSETS="$$(hack/k8s-binaries.sh | tail -1)" hack/bench-manager.sh

.PHONY: bench-manager-docs
bench-manager-docs: ## make bench-manager, and rewrite its section of docs/benchmarks.md when it passed.
	KW_BENCH_WRITE_DOCS=1 KUBEBUILDER_ASSETS="$$(hack/k8s-binaries.sh | tail -1)" hack/bench-manager.sh
