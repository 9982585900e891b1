PYTHON ?= python3
# .ci/deps makes this virtual environment from $(PYTHON) and puts the test
# tools in it; the targets below run its python.
VENV ?= .venv
VPY = $(VENV)/bin/python
DEPS = PYTHON=$(PYTHON) VENV=$(VENV) bash .ci/deps

.PHONY: build test test-slurm mutants lint demo bench bench-faults bench-scale clean

build:
	bash build_zipapp.sh

# Installs what the tests need first where it is missing (.ci/deps).  -rs
# lists every skip with its reason (under CI=true a skip fails, see
# tests/conftest.py).  pytest exits 5 when it collected no tests: that must
# fail, never pass.  tests/slurm runs under `make test-slurm` only.
# setuptools and wheel: the packaging test installs clstr with pip, offline.
test:
	$(DEPS) pytest vermin setuptools wheel
	$(VPY) -m pytest -q -rs --ignore=tests/slurm tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

# A real four-node Slurm on 127.0.0.1 (nodes n1-n4: one slurmctld, four
# slurmd; tests/slurm_cluster.py), with tests that kill, stop and crash one
# node mid-run.  As root; installs slurmctld, slurmd, slurm-client and munge
# where missing (tests/slurm/run.sh).  A few minutes; not part of `test`, but
# .ci/run runs it after `test`.
test-slurm:
	PYTHON=$(PYTHON) bash tests/slurm/run.sh

# Each deliberate bug in tests/mutants/ applied to a scratch copy of the tree:
# the tests it names must fail.  Slow; not part of CI.
mutants:
	$(DEPS) pytest
	$(VPY) tests/mutants/run.py

# ruff with the configuration in pyproject.toml; vermin proves Python 3.8
# syntax and APIs suffice for the package.
lint:
	$(DEPS) ruff vermin
	$(VPY) -m ruff check clstr tests demo $(wildcard bench)
	$(VPY) -c "import sys; from vermin.main import main; sys.exit(main())" \
		-t=3.8- --no-tips --violations --eval-annotations clstr

# What `make test` installs, so that the demo runs wherever the tests do.
demo:
	$(DEPS) pytest vermin
	$(VPY) demo/demo.py

bench:
	$(PYTHON) bench/bench.py

bench-faults:
	$(PYTHON) bench/faults.py

bench-scale:
	$(PYTHON) bench/scale.py

clean:
	rm -rf clstr.pyz clstr.pyz.tmp build dist *.egg-info .pytest_cache $(VENV)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
