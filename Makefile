# vzpkg developer entry points.  `make demo` and `make test` set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml tools/install-system-deps
	./tools/install-system-deps
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

# The main job on the built-in default: build a Debian 12 cache, create a VE from it,
# run a command in it.
demo: setup
	./tools/demo $(BIN)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(BIN)/ruff check vzpkg tests bench
	$(BIN)/mypy

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
