# Two commands do everything on a fresh machine (see README.md):
#   make book   build the rendered book into _build/html (creates .venv-book on first use: Jupyter
#               Book only, no torch; the book renders the outputs stored in the notebooks)
#   make test   every stage below, each run even when an earlier one fails (creates .venv)
# Stages, also runnable alone: make lint, test-package, test-notebooks, test-fresh-env, test-browser.
# Authoring:    make execute (re-run notebooks in place, saving outputs and widget state),
#               make test-robust (nbval under perturbations that imitate other machines),
#               make setup-cells (rewrite every chapter's set-up cell from the template),
#               make book-offline (the book with MathJax and widgets served locally),
#               make environment.yml (rewrite it from pyproject.toml).
#
# TORCH_SPEC says which torch to install into .venv: the registry's normal build by default.
# CI sets TORCH_SPEC=torch==2.13.0 (a CPU build served locally); `make test TORCH_SPEC=...` works too.

PYTHON     ?= python3
VENV       ?= .venv
BOOK_VENV  ?= .venv-book
TORCH_SPEC ?= torch
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
BOOK_STAMP := $(BOOK_VENV)/.installed
# xfail_strict: after a cell times out nbval marks the rest of the chapter xfail, and their passes
# (XPASS) would otherwise leave the run green; strict makes a timeout fail the run.
NBVAL_OPTS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 600 -o xfail_strict=true -p no:cacheprovider
BOOK_OPTS  := -W -n --keep-going --builder html

# Parallel tests (pytest-xdist). The package tests spread over every core. The chapters run
# NB_JOBS at a time, each chapter whole in one worker (nbval runs a notebook in one kernel:
# --dist loadfile), longest first (--no-loadscope-reorder keeps the order below), so the last
# chapter to start is a short one. Each worker gets an equal share of the cores as torch threads
# (OMP_NUM_THREADS), so that workers do not oversubscribe the machine; the chapters' checked
# outputs do not depend on the thread count (tools/robust.py checks that, setting threads2).
CORES      := $(shell nproc 2>/dev/null || echo 2)
JOBS       ?= auto
NB_JOBS    ?= 2
NB_THREADS ?= $(shell n=$$(( $(CORES) / $(NB_JOBS) )); [ $$n -ge 1 ] && echo $$n || echo 1)
# Longest first, as measured with --durations (the rest follow in name order).
NOTEBOOKS  := $(addprefix notebooks/,11_training_on_gpu.ipynb 12_looking_inside.ipynb \
              08_cross_modal_fusion.ipynb 10_pretraining_and_finetuning.ipynb project_practice.ipynb \
              09_loss.ipynb 07_transformer_decoder.ipynb 13_scaling_out.ipynb)
NOTEBOOKS  += $(filter-out $(NOTEBOOKS),$(sort $(wildcard notebooks/*.ipynb)))
# The stages of `make test`, in order; tests/test_browser.py and tests/test_fresh_env.py are
# stages of their own (minutes each), so the package stage leaves them out. The last two run side
# by side (E2E_STAGES: mostly pip, npm, Sphinx and Chromium, one core each), each into its own log
# under _build/, printed when both are done.
STAGES     := lint test-package test-notebooks test-fresh-env test-browser
E2E_STAGES := test-fresh-env test-browser
E2E_TESTS  := tests/test_browser.py tests/test_fresh_env.py

.PHONY: book book-offline test lint test-package test-notebooks test-robust test-browser test-fresh-env \
        execute setup-cells figures venv venv-book clean

venv: $(STAMP)
venv-book: $(BOOK_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	touch $(STAMP)

# The book's own small environment: the `book` extra only (not mmgpt, not torch).
$(BOOK_STAMP): pyproject.toml tools/requirements.py
	test -x $(BOOK_VENV)/bin/python || $(PYTHON) -m venv $(BOOK_VENV)
	$(BOOK_VENV)/bin/python tools/requirements.py extra book > $(BOOK_VENV)/requirements.txt
	$(BOOK_VENV)/bin/python -m pip install --quiet --no-compile -r $(BOOK_VENV)/requirements.txt
	touch $(BOOK_STAMP)

book: $(BOOK_STAMP)
	$(BOOK_VENV)/bin/jupyter-book build . $(BOOK_OPTS)
	@echo "The book is in _build/html/index.html"

book-offline: $(STAMP)
	$(BIN)/python tools/offline_assets.py fetch
	MMGPT_BOOK_OFFLINE=1 $(BIN)/jupyter-book build . $(BOOK_OPTS) --path-output _build/offline
	@echo "The offline book is in _build/offline/_build/html/index.html"

# Every stage runs, whatever the ones before it did; the stages that failed are named at the end.
test: $(STAMP)
	@failed=""; all_start=$$(date +%s); mkdir -p _build; \
	for stage in $(filter-out $(E2E_STAGES),$(STAGES)); do \
	    echo "=== make $$stage"; start=$$(date +%s); \
	    $(MAKE) --no-print-directory $$stage || failed="$$failed $$stage"; \
	    echo "=== make $$stage: $$(( $$(date +%s) - start )) s"; \
	done; \
	echo "=== make $(E2E_STAGES), side by side"; \
	for stage in $(E2E_STAGES); do \
	    ( start=$$(date +%s); $(MAKE) --no-print-directory $$stage > _build/$$stage.log 2>&1; \
	      echo $$? > _build/$$stage.rc; echo "$$(( $$(date +%s) - start ))" > _build/$$stage.time ) & \
	done; \
	wait; \
	for stage in $(E2E_STAGES); do \
	    echo "=== make $$stage (_build/$$stage.log)"; cat _build/$$stage.log; \
	    [ "$$(cat _build/$$stage.rc)" = 0 ] || failed="$$failed $$stage"; \
	    echo "=== make $$stage: $$(cat _build/$$stage.time) s"; \
	done; \
	echo "=== make test: $$(( $$(date +%s) - all_start )) s"; \
	if [ -n "$$failed" ]; then echo "=== make test FAILED in:$$failed"; exit 1; fi; \
	echo "=== make test: every stage passed"

lint: $(STAMP)
	$(BIN)/ruff check .

test-package: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -p no:cacheprovider -n $(JOBS) $(addprefix --ignore=,$(E2E_TESTS))

# --durations lists the slowest cells: each should stay near a minute or less (README).
test-notebooks: $(STAMP)
	OMP_NUM_THREADS=$(NB_THREADS) $(BIN)/python -m pytest $(NBVAL_OPTS) -n $(NB_JOBS) --dist loadfile \
	    --no-loadscope-reorder --durations=15 $(NOTEBOOKS)

# The end-to-end checks: the offline book in a real browser, and the Colab path.
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

environment.yml: pyproject.toml tools/requirements.py
	$(PYTHON) tools/requirements.py environment > $@

clean:
	rm -rf _build

figures: $(STAMP)
	$(BIN)/python tools/make_figures.py
