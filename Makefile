# make install | test | demo | dist | dist-check | bench | lint  (see README)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

# torch for the dev venv: the CPU build, on purpose (on Linux a plain index gives the ~3 GB CUDA build).
# The `+cpu` pin makes pip fail fast where no CPU build is reachable instead of downloading CUDA torch.
# TORCH_INDEX_URL empty: pip's configured indexes and find-links (where this repository is developed, a local
# wheel folder holds torch 2.13.0+cpu). Elsewhere:
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#   make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128   # CUDA 12.8
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)

# `make dist` builds in its own small venv (only `build`); the isolated builds fetch setuptools themselves.
BUILD_VENV := build/dist-venv
BUILD_PY := $(BUILD_VENV)/bin/python
PACKAGES := gr00t-client gr00t-eval gr00t-server

.PHONY: install test demo dist dist-check bench lint clean

install: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt packages/gr00t-client/pyproject.toml packages/gr00t-server/pyproject.toml packages/gr00t-eval/pyproject.toml scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel
	$(PIP_INSTALL) $(TORCH_INDEX) '$(TORCH_SPEC)'
	$(PIP_INSTALL) -e packages/gr00t-client -e 'packages/gr00t-eval[plots,sim,pusht,ray]' \
		-e 'packages/gr00t-server[replay,onnx,metrics]' -r requirements-dev.txt
	$(PY) -c "import torch; print('torch', torch.__version__, '- CUDA', torch.version.cuda or 'none (CPU build)')"
	touch $(STAMP)

test: install lint
	$(PY) -m pytest

demo: install
	bash scripts/demo.sh

# Wheels and sdists of the three packages in dist/, built in isolation from a clean tree: stale build/ and
# egg-info folders (which once shipped a deleted module) are removed first. Needs no dev venv.
dist:
	rm -rf dist $(addprefix packages/,$(addsuffix /build,$(PACKAGES))) packages/*/src/*.egg-info
	test -x $(BUILD_PY) || $(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_PY) -m pip install --quiet --disable-pip-version-check 'build>=1.2'
	for p in $(PACKAGES); do $(BUILD_PY) -m build --outdir dist packages/$$p || exit 1; done
	ls -l dist

# Install the wheels from dist/ into fresh venvs (client alone with numpy 2 and 1, eval alone, server with and
# without [replay]) and smoke-test each against a real replay server. The server venv downloads torch
# (TORCH_SPEC / TORCH_INDEX_URL) and transformers: minutes and ~1.3 GB.
# The Python check comes first (in the recipe, so that `make -j` cannot start dist's rm -rf dist beside it): dist
# would otherwise build for a minute before an older Python is refused.
dist-check:
	$(PYTHON) scripts/dist_check.py --check-python
	$(MAKE) dist
	$(PYTHON) scripts/dist_check.py --dist dist --torch-spec '$(TORCH_SPEC)' --torch-index-url '$(TORCH_INDEX_URL)'

bench: install
	$(PY) benchmarks/wire_latency.py
	-$(PY) benchmarks/throughput.py  # exits 1 when a target printed FAIL; the other benchmarks still run
	$(PY) benchmarks/batching_timeline.py
	$(PY) benchmarks/policy_latency.py
	$(PY) benchmarks/preprocessing.py
	$(PY) benchmarks/amplification_probes.py
	$(PY) benchmarks/record_stats.py
	$(PY) benchmarks/timeout_storm.py

lint: install
	$(VENV)/bin/vermin --target=3.9- --violations --no-tips --eval-annotations packages/gr00t-client/src

clean:
	rm -rf $(VENV) dist build $(addprefix packages/,$(addsuffix /build,$(PACKAGES))) packages/*/src/*.egg-info
