# brevpipe developer commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime
ARGS   ?=
PYTEST_ARGS ?=
# test processes (pytest-xdist): two halve the suite's time on two cores; TEST_WORKERS=0 runs
# it in this process. --dist loadgroup: tests marked xdist_group("ray") share one process, so
# two Ray instances never run at once
TEST_WORKERS ?= 2

.PHONY: help install browser run ui test test-fast lint bench docs docs-serve clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install brevpipe with its dev extras (idempotent)

# uv installs from its cache in seconds; it is taken into .venv with pip when missing, and pip
# does the install itself when uv cannot be had or fails (INSTALLER=pip forces pip). compat
# mode puts the source tree on sys.path, so Hydra finds hydra_plugins/ too. Bytecode is
# compiled at install (pip does by default, uv when asked): where PYTHONDONTWRITEBYTECODE=1
# (Docker images, CI), every process would otherwise compile TensorFlow's Python anew.
INSTALLER ?= uv
define install_editable
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ "$(INSTALLER)" = uv ] && { test -x $(BIN)/uv || \
	     $(BIN)/python -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1; } && \
	   $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '$(1)' \
	     -C editable_mode=compat; \
	then echo "installed $(1) with uv"; \
	else $(BIN)/python -m pip install --disable-pip-version-check -q -e '$(1)' \
	       --config-settings editable_mode=compat; fi
	$(BIN)/python -m compileall -q brevpipe hydra_plugins  # the editable source tree too
endef

$(STAMP): pyproject.toml
	$(call install_editable,.[dev])
	touch $(RUNTIME_STAMP) $(STAMP)

# the runtime dependencies only: what `make run` needs (no test, lint or sweep tools)
$(RUNTIME_STAMP): pyproject.toml
	$(call install_editable,.)
	touch $(RUNTIME_STAMP)

run: $(RUNTIME_STAMP)  ## run the default pipeline (shapes dataset, ./jobs, ./mlflow.db); ARGS='seed=3 ...'
	$(BIN)/brevpipe run $(ARGS)

ui: $(RUNTIME_STAMP)  ## the web dashboard over ./jobs at http://127.0.0.1:8765; ARGS='--root s3://bucket/jobs'
	$(BIN)/brevpipe ui $(ARGS)

browser:  ## headless Chromium for the report and dashboard tests (Debian package)
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  { timeout 300 apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { timeout 300 apt-get update -q >/dev/null 2>&1 && \
	      timeout 300 apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium could not be installed (needs root and the Debian mirror): the report and dashboard browser tests will fail; BREVPIPE_NO_BROWSER=1 skips them"

docs: install  ## build the documentation site into site/ (mkdocs build --strict)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

docs-serve: install  ## serve the documentation with live reload on http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve

test: install browser  ## run the test suite
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: install  ## the tests that train no model
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m 'not slow' $(PYTEST_ARGS)

lint: install  ## ruff
	$(BIN)/ruff check brevpipe tests bench hydra_plugins

bench: install  ## benchmarks: ratios against what users would write instead (tf.data, Keras scripts), saved in bench/results/
	$(BIN)/python bench/input_pipeline.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/data_cache.py
	$(BIN)/python bench/job_overhead.py --sweep
	$(BIN)/python bench/ui_listing.py
	$(BIN)/python bench/sweep_pruning.py

clean:  ## remove generated state (jobs, MLflow store, multirun folders), keep .venv
	rm -rf jobs mlruns mlartifacts mlflow.db multirun outputs bench/results .pytest_cache \
		build brevpipe.egg-info site
