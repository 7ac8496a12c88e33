# bpfree-bench. `make help` lists the targets.
PYTHON      ?= python3.11
VENV        ?= .venv
PY          := $(VENV)/bin/python
DATA        ?= $(if $(BPFREE_DATA),$(BPFREE_DATA),data)
EXPERIMENT  ?= default
RESULTS     ?= results
PORT        ?= 8080
HOST        ?= 127.0.0.1
SHARED_DATA ?= ../shared/data
TEST_WORKERS ?= auto
WORKERS     ?= 1
# where pip finds torch: empty is PyPI's default build (CUDA-enabled on Linux); on a laptop without
# an NVIDIA GPU, TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU-only build of the
# same versions, a far smaller download that loads no CUDA libraries: a single run's peak memory
# about halves (README, Speed: `python -m benchmark.perf --only startup --python ...`)
TORCH_INDEX ?=

.DEFAULT_GOAL := help
.PHONY: help venv data bench smoke test test-soak mutate report dashboard perf perf-overhead repro repro-report clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: these builds are the ones the project is tested with
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test,launchers]"
	touch $@

venv: $(VENV)/.installed ## create .venv and install the project into it

data: ## lay out the offline datasets under DATA (when ../shared/data exists; else torchvision downloads)
	@if [ -f $(SHARED_DATA)/prepare.py ]; then $(PY) $(SHARED_DATA)/prepare.py $(DATA); \
	else echo "no $(SHARED_DATA): datasets will be downloaded into $(DATA) on first use"; fi

# WORKERS > 1: grid cells in that many local processes (joblib; threads per worker = cores / WORKERS)
# sharing one journal-file study storage, which takes concurrent writers.
PARALLEL = $(if $(filter-out 1,$(WORKERS)),hydra/launcher=local_processes hydra.launcher.n_jobs=$(WORKERS) \
           tuning.storage=journal:$(RESULTS)/$(EXPERIMENT)/optuna.journal)

bench: venv data ## the main job: experiment=$(EXPERIMENT) (tune, finals, report); WORKERS=2 runs cells in parallel
	BPFREE_DATA=$(DATA) $(PY) -m benchmark experiment=$(EXPERIMENT) results_dir=$(RESULTS) $(PARALLEL)
	$(PY) -m benchmark.report $(RESULTS)/$(EXPERIMENT)
	@echo "results: $(RESULTS)/$(EXPERIMENT)/runs.jsonl  report: reports/$(EXPERIMENT)/index.html"

smoke: venv ## the CI smoke benchmark: the same pipeline on scikit-learn digits, then the graph methods on Cora
	$(MAKE) bench EXPERIMENT=smoke
	$(MAKE) bench EXPERIMENT=smoke_graph

test: venv ## the test suite, one worker per core (pytest-xdist; TEST_WORKERS=0 runs it in one process)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not soak"

test-soak: venv ## the soak tests left out of `make test` (20 random kills of a sweep, then resume)
	$(PY) -m pytest -q -m soak

mutate: venv data ## one-line defects into a copy, the suite against each: which test catches it (long; not in CI)
	BPFREE_DATA=$(DATA) $(PY) -m tests.mutate

REPRO_DIR   ?= docs/reproduction

repro: venv data ## a paper at its own settings: EXPERIMENT=repro_<paper> [ARGS=overrides]; records + report in $(REPRO_DIR)/ (committed)
	BPFREE_DATA=$(DATA) $(PY) -m benchmark experiment=$(EXPERIMENT) results_dir=$(REPRO_DIR) $(ARGS)
	$(MAKE) repro-report

repro-report: venv ## regenerate the published reproduction report from the committed records in $(REPRO_DIR)/
	$(PY) -m benchmark.report $(sort $(dir $(wildcard $(REPRO_DIR)/repro_*/runs.jsonl*))) --out $(REPRO_DIR)/report --all-figures

report: venv ## render reports/$(EXPERIMENT)/ from $(RESULTS)/$(EXPERIMENT)
	$(PY) -m benchmark.report $(RESULTS)/$(EXPERIMENT)

dashboard: venv ## optuna-dashboard on the study the experiment was tuned in (SQLite, journal or server), bound to $(HOST)
	$(PY) -m benchmark.dashboard $(RESULTS)/$(EXPERIMENT) --host $(HOST) --port $(PORT)

perf: venv ## speed benchmark: harness vs bare loop vs DataLoader, per-method throughput
	BPFREE_DATA=$(DATA) $(PY) -m benchmark.perf --out $(RESULTS)/perf.csv

perf-overhead: venv ## meters on vs off, interleaved: the median time ratio
	BPFREE_DATA=$(DATA) $(PY) -m benchmark.perf --only overhead --out $(RESULTS)/perf-overhead.csv

clean: ## remove generated results and reports (keeps .venv and data)
	rm -rf $(RESULTS)/* reports/*/
