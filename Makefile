# trtkit: every install step lives here. `make build-engine` and `make test` work on a fresh machine
# that has nothing but Python 3.10+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, and only if it is not importable: a bare `torch` requirement pulls a CUDA build (GBs).
TORCH_SPEC ?= torch==2.13.0
MODEL  ?=
OUT    ?= build/engine
SRC    ?= build/tiny-src

.PHONY: setup setup-test test build-engine bench bench-gpu bench-static lint clean recipes

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.core

setup-test: $(VENV)/.test

test: setup-test
	$(BIN)/python -m pytest -q tests

# The main job: checkpoint in, engine bundle out (NVFP4 checkpoint calibrated and verified against
# the source, recipes per GPU type, manifest). MODEL=path builds your own gpt-oss folder; without it
# the embedded tiny default is synthesized first. The bundle is re-checked after it is written.
build-engine: setup
ifeq ($(strip $(MODEL)),)
	$(BIN)/trtkit synth --quiet --shape tiny --force $(SRC)
	$(BIN)/trtkit build --force $(SRC) $(OUT)
else
	$(BIN)/trtkit build --force $(MODEL) $(OUT)
endif
	$(BIN)/trtkit bundle check $(OUT)

bench: setup-test
	$(BIN)/python bench/run.py

# The plugin kernels on one NVIDIA H100/H200 (BENCHMARKS.md, issue 6): a CUDA build of torch + triton.
# Then BENCHMARKS.md's MoE decode rows and the planner's recomputed TRTKIT_SPEED from that JSON.
bench-gpu: setup-test
	$(BIN)/python bench/bench_gpu.py --out build/bench_gpu.json
	$(BIN)/python bench/moe_table.py build/bench_gpu.json

# The MoE GEMMs compiled for sm_90 on this machine (no GPU): K-loop SASS per weight, pipelined loads,
# for the k_major storage and its spread form.
bench-static: setup-test
	$(BIN)/python bench/moe_static.py --batch 1 32 128
	$(BIN)/python bench/moe_static.py --batch 1 32 128 --spread

# Regenerate the checked-in recipe catalog (recipes/catalog/<model>/<gpu>/<isl>k<osl>k_<profile>/).
recipes: setup
	$(BIN)/python -m recipes.catalog

lint: setup-test
	$(BIN)/python -m ruff check plugins builder recipes deploy trtkit tests bench
	$(BIN)/python -m pytest -q tests/test_layering.py

clean:
	rm -rf build
