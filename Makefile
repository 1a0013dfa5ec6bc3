VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-reverse install bench lint typecheck constraints clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# constraints.txt pins every package (dev tools included) so CI resolves the same versions every time;
# regenerate it after changing dependencies in pyproject.toml (existing pins are kept where they still fit)
constraints: $(STAMP)
	$(PY) -m pip install -q 'pip-tools>=7.4,<8'
	$(VENV)/bin/pip-compile -q --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		--output-file constraints.txt pyproject.toml

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fulqrun-hub run

test: lint typecheck
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-reverse: $(STAMP)
	$(PY) -m pytest -q --reverse

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .hub
