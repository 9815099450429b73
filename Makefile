# make install | test | demo | dist | bench | lint  (see README)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: install test demo dist bench lint clean

install: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt packages/gr00t-client/pyproject.toml packages/gr00t-server/pyproject.toml packages/gr00t-eval/pyproject.toml scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel
	$(PIP_INSTALL) -e packages/gr00t-client -e 'packages/gr00t-eval[sim,ray]' -e 'packages/gr00t-server[onnx]' -r requirements-dev.txt
	touch $(STAMP)

test: install lint
	$(PY) -m pytest

demo: install
	bash scripts/demo.sh

dist: install
	rm -rf dist
	for p in gr00t-client gr00t-server gr00t-eval; do $(PY) -m build --wheel --no-isolation --outdir dist packages/$$p || exit 1; done

bench: install
	$(PY) benchmarks/wire_latency.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/policy_latency.py

lint: install
	$(VENV)/bin/vermin --target=3.9- --violations --no-tips --eval-annotations packages/gr00t-client/src

clean:
	rm -rf $(VENV) dist build
