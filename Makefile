# The README's two commands: `make test` and `make demo`. Both create .venv and install the
# pinned, tested-together dependency set (requirements.txt + constraints.txt) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
# The suite runs on both cores (pytest-xdist), each test file on one worker so that its module
# fixtures are built once; PYTEST_WORKERS=0 runs it in one process. Files are handed out in
# collection order (tests/conftest.py puts the end-to-end files first), not xdist's default of
# most tests first, which left the long one-test files to finish the suite alone.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install test test-fast lint-imports demo demo-quick demo-seeds bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $@

# The package layers of docs/architecture.md (.importlinter): an import against the stage order
# fails here, before any test runs.
lint-imports: install
	$(VENV)/bin/lint-imports --no-cache

# The full suite, what CI runs. pytest exits 5 when it collects no test; that is not a failure.
test: lint-imports
	$(PYTEST) tests $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# The edit loop: everything but the end-to-end runs marked slow (pipelines, real weights, several
# processes), on both cores.
test-fast: lint-imports
	$(PYTEST) tests -m "not slow" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

demo: install
	$(VENV)/bin/ul2flan pipeline --gin_file=gin_configs/demo.gin --model_dir=$(DEMO_DIR)

# The demo for 3 seeds (runs/demo_seeds/seed_<k>), one report over them: mean [min, max].
demo-seeds: install
	$(VENV)/bin/ul2flan pipeline --gin_file=gin_configs/demo.gin --model_dir=runs/demo_seeds \
		--gin.run_pipeline.seeds=[0,1,2]

demo-quick: install
	$(VENV)/bin/ul2flan pipeline --gin_file=gin_configs/demo_quick.gin --model_dir=runs/demo_quick

bench: install
	$(PY) benchmarks/train_mfu.py

clean:
	rm -rf $(VENV) runs .cache *.egg-info
