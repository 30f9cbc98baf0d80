# openrecog: `make demo` and `make test` work on a fresh machine (offline except PyPI).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean default-model quality ablate

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/openrecog demo

test: $(STAMP)
	$(PY) -m pytest

# Rebuild the shipped default models from scratch (about 40 minutes on 2 CPU cores).
default-model: $(STAMP)
	$(PY) scripts/build_stamps.py
	$(VENV)/bin/openrecog train configs/default.yaml
	$(VENV)/bin/openrecog export runs/default/last src/openrecog/weights/default --weights int8 --force --onnx
	$(VENV)/bin/openrecog train configs/default.yaml model.embedding_dim=64 train.name=default_64
	$(VENV)/bin/openrecog export runs/default_64/last src/openrecog/weights/default_64 --weights int8 --force --onnx

# docs/benchmarks/quality.md: needs ../shared/data (about 40 min on 2 CPU cores).
quality: $(STAMP)
	$(PY) bench/quality.py

# docs/benchmarks/ablations.md: needs ../shared/data (about 1.5 h on 2 CPU cores per seed).
ablate: $(STAMP)
	$(PY) bench/ablate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts

clean:
	rm -rf $(VENV) demo_out runs .pytest_cache
