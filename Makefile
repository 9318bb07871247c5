# lvs-operator: developer and CI entry points. `make help` lists the targets.
#
# Everything runs as root on a fresh Debian machine with only the package registries as
# network (that is what CI does: .ci/run -> `make test`, then `make test-node`, with CI=true
# and no stdin).
# The kernel tier and the benchmarks run inside a qemu VM (tests/vm/run): the host kernel has
# no IPVS. The cluster tier runs a real control plane (etcd, kube-apiserver,
# kube-controller-manager) on 127.0.0.1, from binaries tests/cluster/build-k8s builds and caches.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-print-directory

VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.lvs-installed
# The distribution's Python 3 when it is >= 3.11 and can make a venv, else the first Python
# >= 3.11 on PATH (override: make venv PYTHON=/path/to/python3.12). The distribution's comes
# first because it is an optimized build (Debian's is compiled with PGO and LTO and linked
# statically), like the image's python:3.11-slim (--enable-optimizations --with-lto); a Python
# built from source by pyenv has neither unless asked, and starts and runs measurably slower
# (in the test VM, `python -c pass` 0.66 s vs 0.47 s), which the benchmarks would pay.
PYTHON ?= $(shell for p in /usr/bin/python3 python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' \
	>/dev/null 2>&1 && { command -v $$p; break; }; done)

# Announce a step: make's own echo of the recipe is silenced, so say what is happening.
say = @printf '\n==> %s\n' "$(1)"

# Run a pytest tier; exit code 5 ("no tests collected") is a failure: a tier that ran
# nothing has not passed. $(1) = tier name, $(2) = command.
define pytest_tier
rc=0; $(2) || rc=$$?; \
if [[ $$rc == 5 ]]; then \
	echo "make: $(1): pytest collected no tests (exit 5): a tier that ran nothing has not passed" >&2; \
	exit 1; \
fi; exit $$rc
endef

.PHONY: help venv provision lint _lint test-unit _test-unit test-cluster _test-cluster \
	test-kernel _test-kernel test-fullstack _test-fullstack test bench demo cluster cluster-down \
	image test-image _test-image test-node _test-node e2e-kind clean distclean

help:
	@echo "make venv         create/refresh $(VENV) (python >= 3.11, pip install -e '.[test,dev]')"
	@echo "make provision    Debian packages + the cached IPVS kernel for the test VM (root)"
	@echo "make lint         ruff check + mypy on operator/ and tests/"
	@echo "make test-unit    pytest tests/unit (no root, seconds)"
	@echo "make test-cluster pytest tests/cluster against a real control plane on 127.0.0.1"
	@echo "                  (the first run builds the Kubernetes binaries: ~30 CPU-minutes)"
	@echo "make test-kernel  boot the VM once, run pytest tests/kernel inside it"
	@echo "make test-fullstack  control plane + controller on the host, two directors (agents)"
	@echo "                  in the VM, each with its own qemu user-network uplink; pytest"
	@echo "                  tests/fullstack inside the VM (incl. failover: test_ha.py)"
	@echo "make demo         the whole product on this machine in a few minutes (root)"
	@echo "make test         provision venv lint test-unit test-cluster test-kernel test-fullstack"
	@echo "                  test-image (the image built here, its commands run as the chart runs them)"
	@echo "                  (CI's .ci/run runs it, then test-node)"
	@echo "make bench        benchmarks: tests/bench/kernel inside the VM (booted once),"
	@echo "                  tests/bench/fullstack with the agents in the VM (failover: two"
	@echo "                  directors) and the control plane + controller on the host"
	@echo "                  (tests/fullstack/host.py), then"
	@echo "                  tests/bench/cluster on the host against a real control plane"
	@echo "make cluster      start that control plane in the background (tests/cluster/cluster up);"
	@echo "                  prints the KUBECONFIG to use. make cluster-down stops it"
	@echo "make image        build the one image of every component ($(IMAGE)) with docker,"
	@echo "                  podman or buildah (tests/image/build)"
	@echo "make test-image   run the image's commands in a container as the chart runs them"
	@echo "make test-node    a kubelet + containerd node in the VM, the chart by helm: the pods"
	@echo "                  (the agent's two containers), the webhook's init container, DR and"
	@echo "                  Tunnel traffic, helm upgrade with 0 failed requests, uninstall"
	@echo "                  (tests/node; not in test: .ci/run runs it after test; ~30 min)"
	@echo "make e2e-kind     the chart on a kind cluster: DR, Tunnel and NAT traffic, failover,"
	@echo "                  uninstall (tests/e2e_kind; needs Docker, kind and ip_vs; not in test)"
	@echo "make clean        remove build output and caches (distclean: the venv too)"

# --- environment ------------------------------------------------------------------------------

venv: $(VENV_STAMP)

# Rebuilt when pyproject.toml changes (or the venv is missing or broken).
$(VENV_STAMP): pyproject.toml
	$(call say,venv: $(VENV) with $(or $(PYTHON),NO PYTHON >= 3.11 FOUND))
	@if [[ -z "$(PYTHON)" ]]; then echo "make: no python >= 3.11 on PATH (set PYTHON=...)" >&2; exit 1; fi
	@if [[ -x $(BIN)/python ]] && ! $(BIN)/python -c '' 2>/dev/null; then \
		echo "$(VENV) is broken (its python does not run): recreating it"; rm -rf $(VENV); fi
	@if [[ ! -x $(BIN)/python ]]; then \
		echo "$(PYTHON) -m venv $(VENV)"; \
		$(PYTHON) -m venv $(VENV) || { echo "make: venv creation failed (Debian: apt-get install python3-venv)" >&2; exit 1; }; \
	fi
	@echo "$(BIN)/pip install -e '.[test,dev]'"
	@$(BIN)/pip install --disable-pip-version-check --progress-bar off -q -e '.[test,dev]'
	@touch $@
	@echo "$(VENV) ready"

provision:
	$(call say,provision: Debian packages and the cached kernel for the test VM (tests/vm/provision))
	@tests/vm/provision

# --- checks -----------------------------------------------------------------------------------

# mypy runs once per test folder: the folders are not packages, so two conftest.py files in one
# run would clash. Tests may leave functions unannotated (as ruff's ANN rules allow there), but
# their bodies are still type-checked.
MYPY_TEST_FLAGS := --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls --check-untyped-defs

# tests/ itself is on the path (tests/conftest.py puts it on sys.path for shared case tables).
# All runs are attempted; lint fails if any did.
# Each check has a public target (with its prerequisites) and a "_" one without them, which
# `make test` calls once venv and provision are done.
lint: venv
	@$(MAKE) _lint
_lint:
	@rc=0; \
	printf '\n==> lint: ruff check operator tests\n'; \
	$(BIN)/ruff check operator tests || rc=1; \
	echo "==> lint: mypy (strict, per pyproject.toml) on the lvs_operator package"; \
	$(BIN)/mypy || rc=1; \
	if ls tests/*.py >/dev/null 2>&1; then \
		echo "==> lint: mypy tests/*.py"; \
		MYPYPATH=tests $(BIN)/mypy $(MYPY_TEST_FLAGS) tests/*.py || rc=1; \
	fi; \
	for d in $$(find tests -mindepth 2 -name '*.py' -printf '%h\n' | sort -u); do \
		echo "==> lint: mypy $$d/*.py"; \
		MYPYPATH=tests:tests/cluster:tests/fullstack $(BIN)/mypy $(MYPY_TEST_FLAGS) "$$d"/*.py \
			|| rc=1; \
	done; \
	exit $$rc

test-unit: venv
	@$(MAKE) _test-unit
_test-unit:
	$(call say,test-unit: pytest tests/unit)
	@$(call pytest_tier,test-unit,$(BIN)/pytest tests/unit)

# The cluster fixture runs tests/cluster/build-k8s itself (cached; a cold build prints progress).
test-cluster: provision venv
	@$(MAKE) _test-cluster
_test-cluster:
	$(call say,test-cluster: a real control plane on 127.0.0.1; pytest tests/cluster)
	@$(call pytest_tier,test-cluster,$(BIN)/pytest tests/cluster -v)

test-kernel: provision venv
	@$(MAKE) _test-kernel
_test-kernel:
	$(call say,test-kernel: boot the VM once; pytest tests/kernel inside it)
	@$(call pytest_tier,test-kernel,tests/vm/run $(BIN)/pytest tests/kernel -v)

# The host half (control plane, CRD, Nodes, controller) runs around one VM boot in which
# pytest runs; tests/fullstack/host.py skips (fails under CI) when the stack cannot start.
# The VM gets one qemu user-network NIC per director Node (LVS_FULLSTACK_DIRECTORS, default
# 2): each test module builds its own site with as many directors as it needs.
test-fullstack: provision venv
	@$(MAKE) _test-fullstack
_test-fullstack:
	$(call say,test-fullstack: control plane + controller on the host; pytest tests/fullstack in the VM)
	@$(call pytest_tier,test-fullstack,$(BIN)/python tests/fullstack/host.py $(BIN)/pytest tests/fullstack -v)

# Every step runs even if an earlier check failed (one CI run tells everything); the target
# fails if any did. venv and provision must succeed first.
test: provision venv
	@failed=(); summary=(); \
	for step in lint test-unit test-cluster test-kernel test-fullstack test-image; do \
		start=$$SECONDS; \
		if $(MAKE) _$$step; then r=ok; else r=FAILED; failed+=($$step); fi; \
		summary+=("$$(printf '%-15s %-7s %4ss' $$step $$r $$((SECONDS - start)))"); \
	done; \
	printf '\n==> make test summary\n'; printf '    %s\n' "$${summary[@]}"; \
	if (( $${#failed[@]} )); then echo "make test: FAILED: $${failed[*]}" >&2; exit 1; fi; \
	echo "make test: all steps passed"

# --- by hand ---------------------------------------------------------------------------------

# The README's first command: everything on this machine, torn down at the end.
demo: provision venv
	$(call say,demo: control plane + controller on the host, director + real servers in the kernel VM)
	@$(BIN)/python tests/demo/demo.py

# The cluster tier's control plane, left running (state in ~/.cache/lvs-operator/cluster).
cluster:
	$(call say,cluster: etcd + kube-apiserver + kube-controller-manager on 127.0.0.1 (tests/cluster/cluster up))
	@tests/cluster/cluster up
cluster-down:
	@tests/cluster/cluster down

# One part of the benchmarks (every part runs; bench fails if any did). A part that collects
# nothing (pytest exit 5) fails only under CI. A part that cannot start fails under CI;
# outside CI tests/fullstack/host.py and the cluster fixture skip it with the reason (no
# Kubernetes binaries), while tests/vm/run fails without its kernel.
# $(1) = folder, $(2) = command.
define bench_part
r=0; $(2) || r=$$?; \
if [[ $$r == 5 ]]; then \
	echo "make bench: no benchmarks collected in $(1)" >&2; [[ "$${CI:-}" == true ]] || r=0; \
fi; [[ $$r == 0 ]] || rc=1
endef

# The parts run one after the other: never two VMs at once.
bench: provision venv
	$(call say,bench: boot the VM once; pytest tests/bench/kernel inside it (results in build/vm-out))
	@rc=0; $(call bench_part,tests/bench/kernel,tests/vm/run $(BIN)/pytest tests/bench/kernel -s -v); \
	printf '\n==> %s\n' "bench: control plane + controller on the host, agent in the VM; pytest tests/bench/fullstack in the VM (results in build/vm-out)"; \
	$(call bench_part,tests/bench/fullstack,$(BIN)/python tests/fullstack/host.py $(BIN)/pytest tests/bench/fullstack -s -v); \
	printf '\n==> %s\n' "bench: a real control plane on 127.0.0.1; pytest tests/bench/cluster on the host"; \
	$(call bench_part,tests/bench/cluster,$(BIN)/pytest tests/bench/cluster -s -v); \
	exit $$rc

# The image of the chart (charts/lvs-operator): its tag is the project's version, which is the
# chart's appVersion. tests/image/build picks the engine (a running Docker, else podman, else
# buildah) and the base: BASE (default python:3.11-slim-bookworm, what users get) if it can be
# had, else, for the default only, the stand-in tests/image/base builds from Debian packages
# (no registry is reachable on the project's machines). tests/image/provision installs buildah
# and runc (and what the node tier needs) when they are missing.
IMAGE ?= lvs-operator:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BASE ?= python:3.11-slim-bookworm

image:
	$(call say,image: build $(IMAGE) from operator/Dockerfile (BASE=$(BASE)))
	@tests/image/provision
	@IMAGE=$(IMAGE) BASE=$(BASE) tests/image/build >/dev/null

# The image as the chart runs it: `lvs-operator --help`, `controller --help`, `agent --help`,
# `keepalived --help` in a container with the entrypoint, the chart's user, a read-only root
# filesystem and the chart's capabilities; keepalived and nft as the keepalived container.
# Part of `make test`: it builds the image first (cached layers: seconds when warm).
test-image: venv
	@$(MAKE) _test-image
_test-image: image
	$(call say,test-image: the image's commands in a container as the chart runs them)
	@$(call pytest_tier,test-image,IMAGE=$(IMAGE) $(BIN)/pytest tests/image -v)

# The node tier: a real kubelet + containerd node in the kernel VM joined to a control plane on
# the host, the image and the pause image built here (never pulled), `helm install` of the
# chart, the agent pod's two containers, the webhook's init container, DR and Tunnel traffic,
# `kubectl exec`, `helm upgrade` under traffic, `helm uninstall` (tests/node/host.py; see
# tests/node/nodelab.py). Not part of `make test`: it takes more than the 15 minutes a tier
# may add there, so .ci/run calls it after `make test` (see README).
test-node: provision venv
	@$(MAKE) _test-node
_test-node:
	$(call say,test-node: control plane on the host; kubelet + containerd + the chart in the VM)
	@tests/image/provision
	@$(call pytest_tier,test-node,$(BIN)/python tests/node/host.py $(BIN)/pytest tests/node -v -s)

# The kind end-to-end suite (tests/e2e_kind): creates a kind cluster, builds and loads the
# image, installs the chart, sends traffic to DR, Tunnel and NAT VIPs, fails a director over,
# uninstalls and deletes the cluster. Not part of `make test`: where Docker, kind or the ip_vs
# module are missing it skips with the reason, even under CI. LVS_KIND_KEEP=1 keeps the cluster.
e2e-kind: venv
	$(call say,e2e-kind: the chart on a kind cluster; pytest tests/e2e_kind)
	@$(BIN)/pytest tests/e2e_kind -v -s

clean:
	$(call say,clean: build output and tool caches)
	rm -rf build .mypy_cache .ruff_cache .pytest_cache
	find operator tests -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	$(call say,distclean: the virtualenv too (the kernel cache in ~/.cache/lvs-operator stays))
	rm -rf $(VENV)
