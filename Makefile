# Every target installs what it needs, so each works on a fresh machine of this kind.
PY ?= python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data run alignment test bench lint

install:
	$(PY) -m pip install -q -e ".[test,dev,streaming]"

data:
	@if [ ! -f /usr/share/dictd/gcide.dict.dz ] || [ ! -d /usr/share/datasets/fashion-mnist ] \
		|| ! command -v g++ >/dev/null; then \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q dict-gcide dataset-fashion-mnist g++; \
	fi

# Trains into runs/ (git-ignored), so a fresh clone really trains instead of re-printing the
# committed record in results/enwik8_depth/quick (made by the same preset).
run: install data
	$(PY) -m experiments.enwik8_depth --config=experiments/configs/enwik8_depth.py:quick \
		--workdir=runs/enwik8_depth/quick

alignment: install data
	$(PY) -m experiments.gradient_alignment --config=experiments/configs/gradient_alignment.py:cpu

test: install data
	$(PY) -m pytest -n 2 --dist loadgroup tests

bench: install data
	$(PY) -m experiments.benchmarks.lru_local_grads
	$(PY) -m experiments.benchmarks.enwik8_depth --memory
	$(PY) -m experiments.benchmarks.rtrl_speed
	$(PY) -m experiments.benchmarks.rtrl_cells
	$(PY) -m experiments.benchmarks.ff_systems

lint: install
	ruff check . && ruff format --check .
