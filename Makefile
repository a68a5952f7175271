# Two commands do everything on a fresh machine (see README.md):
#   make book   build the rendered book into _build/html (creates .venv on first use)
#   make test   run the package tests and re-execute every chapter with nbval
# Authoring:    make execute (re-run notebooks in place, saving outputs and widget state),
#               make test-robust (nbval under perturbations that imitate other machines),
#               make setup-cells (rewrite every chapter's set-up cell from the template),
#               make book-offline (the book with MathJax and widgets served locally).
#
# TORCH_SPEC says which torch to install into .venv: the registry's normal build by default.
# CI sets TORCH_SPEC=torch==2.13.0 (a CPU build served locally); `make test TORCH_SPEC=...` works too.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
# xfail_strict: after a cell times out nbval marks the rest of the chapter xfail, and their passes
# (XPASS) would otherwise leave the run green; strict makes a timeout fail the run.
NBVAL_OPTS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600 -o xfail_strict=true -p no:cacheprovider
BOOK_OPTS  := -W -n --keep-going --builder html

.PHONY: book book-offline test test-package test-notebooks test-robust test-browser test-fresh-env execute setup-cells figures venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . $(BOOK_OPTS)
	@echo "The book is in _build/html/index.html"

book-offline: $(STAMP)
	$(BIN)/python tools/offline_assets.py fetch
	MMGPT_BOOK_OFFLINE=1 $(BIN)/jupyter-book build . $(BOOK_OPTS) --path-output _build/offline
	@echo "The offline book is in _build/offline/_build/html/index.html"

test: test-package test-notebooks

test-package: $(STAMP)
	$(BIN)/python -m pytest tests -p no:cacheprovider

# --durations lists the slowest cells: each should stay near a minute or less (README).
test-notebooks: $(STAMP)
	$(BIN)/python -m pytest $(NBVAL_OPTS) --durations=15 notebooks

# Parts of test-package, on their own: the offline book in a real browser, and the Colab path.
test-browser: book-offline
	MMGPT_BOOK_HTML=_build/offline/_build/html $(BIN)/python -m pytest tests/test_browser.py -p no:cacheprovider

test-fresh-env: $(STAMP)
	$(BIN)/python -m pytest tests/test_fresh_env.py -p no:cacheprovider

# Before landing a chapter whose outputs depend on training: nbval under settings that imitate
# other machines (other training seeds, thread counts, AVX2 kernels, a busy machine); see
# tools/robust.py. `make test-robust NB=notebooks/07_transformer_decoder.ipynb ROBUST="-s seed1"`.
test-robust: $(STAMP)
	$(BIN)/python tools/robust.py $(ROBUST) $(NB)

execute: $(STAMP)
	$(BIN)/python tools/notebooks.py execute $(NB)

setup-cells: $(STAMP)
	$(BIN)/python tools/notebooks.py setup-cells

clean:
	rm -rf _build

figures: $(STAMP)
	$(BIN)/python tools/make_figures.py
