# Every target runs from the repository root; the virtual environment is created (or refreshed
# when requirements.txt changes) on first use, so a fresh clone needs nothing installed by hand.

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed

# No import may reach the network: albumentations' version check and the Hugging Face hub stay off.
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

CONFIG ?= competitions/siim/configs/unet_resnet18_cpu.yaml
FOLDS  ?= 0,1,2,3,4
# the generic targets (fold0, folds, ensemble, kaggle-bundle) take COMPETITION=<name> or
# DATASET=<folder> (any dataset folder in the documented layout: docs/DATASETS.md)
CLI := $(PY) -m common.cli
ENSEMBLE ?= competitions/$(or $(COMPETITION),siim)/configs/ensembles/default.yaml
# the competition is the ensemble file's package: competitions/<name>/configs/ensembles/...
ENSEMBLE_COMPETITION := $(word 2,$(subst /, ,$(ENSEMBLE)))
ENSEMBLE_PREPARE := $(if $(filter siim,$(ENSEMBLE_COMPETITION)),siim-prepare)
# GPUS=N trains with DistributedDataParallel on N processes (torchrun); RESUME=1 continues a
# killed run from its last finished epoch.
LAUNCH := $(if $(GPUS),$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS),$(PY))
# training overrides (ARGS) reach prepare too (a crop stage's settings), an ensemble's do not
PREPARE_ARGS = $(if $(filter ensemble siim-pseudo hubmap-pseudo,$(MAKECMDGOALS)),,$(ARGS))
SIIM_TRAIN = $(LAUNCH) -m common.cli train --competition siim --config $(CONFIG) $(if $(RESUME),--resume)
# the lung default is a cascade: clavicles_refine.yaml trains its first stage (unet_resnet18_cpu)
LUNG_CONFIG ?= competitions/lung/configs/clavicles_refine.yaml
LUNG_STAGE_CONFIG ?= competitions/lung/configs/unet_resnet18_cpu.yaml
LUNG_TRAIN = $(LAUNCH) -m common.cli train --competition lung --config $(LUNG_CONFIG) $(if $(RESUME),--resume) $(if $(SKIP_BAD),--skip-bad)
HUBMAP_CONFIG ?= competitions/hubmap/configs/unet_resnet18_cpu.yaml
HUBMAP_FILTERED ?= competitions/hubmap/configs/filtered.yaml
HUBMAP_ENSEMBLE ?= competitions/hubmap/configs/ensembles/default.yaml
HUBMAP_TRAIN = $(LAUNCH) -m common.cli train --competition hubmap $(if $(RESUME),--resume) $(if $(SKIP_BAD),--skip-bad)

.DEFAULT_GOAL := help
.PHONY: help venv test test-all fixup lint bench clean fold0 folds siim-synthetic siim-prepare siim-fold0 siim-folds ensemble submit kaggle-bundle kaggle-push lung-prepare lung-fold0 lung-folds hubmap-prepare hubmap-fold0 hubmap-folds hubmap-filter leaderboard siim-pseudo hubmap-pseudo lung-techniques

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP)  ## create or refresh .venv from requirements.txt

test: $(STAMP)  ## run the test suite (slow tests excluded)
	$(PY) -m pytest

test-all: $(STAMP)  ## run every test, slow ones included
	$(PY) -m pytest -m ""

fixup: $(STAMP)  ## format and lint with ruff, fixing what it can
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

lint: $(STAMP)  ## check formatting and lint without changing files
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

bench: $(STAMP)  ## run the benchmarks; figures go to benchmarks/results.json
	$(PY) -m benchmarks.run

siim-synthetic: $(STAMP)  ## write the embedded synthetic SIIM set to data/siim/synthetic (SIZE=256)
	$(PY) -m competitions.siim.synthetic --out data/siim/synthetic --size $(or $(SIZE),256)

siim-prepare: $(STAMP)  ## decode raw (or synthetic) SIIM at the CONFIG's size + folds.csv; SKIP_BAD=1
	$(CLI) prepare --competition siim --config $(CONFIG) $(if $(SIZE),--size $(SIZE)) $(if $(SKIP_BAD),--skip-bad) $(PREPARE_ARGS)

siim-fold0: siim-prepare  ## prepare, train fold 0 of CONFIG, OOF maps, threshold search; GPUS=N, RESUME=1
	$(SIIM_TRAIN) --folds 0 $(ARGS)

siim-folds: siim-prepare  ## the same for every fold in FOLDS (default 0,1,2,3,4)
	$(SIIM_TRAIN) --folds $(FOLDS) $(ARGS)

lung-techniques: $(STAMP)  ## each seed technique on/off against LUNG_STAGE_CONFIG on both SCR folds; PREFIX=, VARIANTS=, ARGS=
	$(PY) -m experiments.lung_techniques --config $(LUNG_STAGE_CONFIG) --prefix $(or $(PREFIX),abl) $(if $(VARIANTS),--variants $(VARIANTS)) $(ARGS)

lung-prepare: $(STAMP)  ## read data/lung/raw (or the synthetic lung set) at LUNG_CONFIG's size (a refinement's frame)
	$(CLI) prepare --competition lung --config $(LUNG_CONFIG) $(if $(SKIP_BAD),--skip-bad) $(PREPARE_ARGS)

lung-fold0: $(STAMP)  ## train on the odd SCR cases (the default: first stage, then clavicle refinement), predict the even ones, print Dice/Jaccard; LUNG_CONFIG=
	$(LUNG_TRAIN) --folds 0 $(ARGS)

lung-folds: $(STAMP)  ## both SCR folds: every case predicted once -> submissions/lung/<name>.csv
	$(LUNG_TRAIN) --folds 0,1 $(ARGS)

hubmap-prepare: $(STAMP)  ## tile data/hubmap/raw (or the synthetic slides) at HUBMAP_CONFIG's window and size
	$(CLI) prepare --competition hubmap --config $(HUBMAP_CONFIG) $(if $(SKIP_BAD),--skip-bad) $(PREPARE_ARGS)

hubmap-fold0: $(STAMP)  ## train fold 0 on tiles, predict its held-out slide whole, search and score; HUBMAP_CONFIG=
	$(HUBMAP_TRAIN) --config $(HUBMAP_CONFIG) --folds 0 $(ARGS)

hubmap-folds: $(STAMP)  ## the same for every fold in HUBMAP_FOLDS (default 0,1,2; folds grouped by patient)
	$(HUBMAP_TRAIN) --config $(HUBMAP_CONFIG) --folds $(or $(HUBMAP_FOLDS),0,1,2) $(ARGS)

hubmap-filter: $(STAMP)  ## the seed's tile filter: score HUBMAP_CONFIG's fold-0 tiles, train HUBMAP_FILTERED on the rest; FILTER_FOLDS=0,1
	$(CLI) tile-filter --competition hubmap --config $(HUBMAP_CONFIG) --folds $(or $(FILTER_FOLDS),0)
	$(HUBMAP_TRAIN) --config $(HUBMAP_FILTERED) --folds $(or $(FILTER_FOLDS),0) $(ARGS)

# fold0 / folds: a dataset folder's (no code), else the competition's own target
ifdef DATASET
fold0: $(STAMP)  ## fold 0 of DATASET=<folder> (plan, prepare, train, OOF search) or of COMPETITION (its <name>-fold0)
	$(CLI) train --dataset $(DATASET) --folds 0 $(if $(SKIP_BAD),--skip-bad) $(ARGS)

folds: $(STAMP)  ## every fold in FOLDS of DATASET=<folder> (or COMPETITION's <name>-folds)
	$(CLI) train --dataset $(DATASET) --folds $(FOLDS) $(if $(SKIP_BAD),--skip-bad) $(ARGS)
else
fold0: $(or $(COMPETITION),siim)-fold0
folds: $(or $(COMPETITION),siim)-folds
endif

ensemble: $(STAMP) $(if $(DATASET),,$(ENSEMBLE_PREPARE))  ## OOF search + test submission for ENSEMBLE (or COMPETITION=, or DATASET=<folder>); trains missing members
	$(if $(DATASET),$(CLI) ensemble --dataset $(DATASET) $(if $(SKIP_BAD),--skip-bad) $(ARGS),$(CLI) ensemble --competition $(ENSEMBLE_COMPETITION) --config $(ENSEMBLE) $(ARGS))

submit: $(STAMP)  ## validate the ensemble's CSV (or CSV=...), then kaggle competitions submit; MESSAGE=
	$(CLI) submit --competition $(ENSEMBLE_COMPETITION) --csv $(or $(CSV),submissions/$(ENSEMBLE_COMPETITION)/$(basename $(notdir $(ENSEMBLE))).csv) $(if $(MESSAGE),--message "$(MESSAGE)")

kaggle-bundle: $(STAMP)  ## frozen code + ENSEMBLE's (or DATASET's) weights + offline notebook in dist/kaggle/<name>/; OWNER=
	$(if $(DATASET),$(CLI) bundle --dataset $(DATASET) $(if $(OWNER),--owner $(OWNER)),$(CLI) bundle --competition $(ENSEMBLE_COMPETITION) build --ensemble $(ENSEMBLE) $(if $(OWNER),--owner $(OWNER)))

kaggle-push: $(STAMP)  ## create or version the bundle's dataset and push its notebook (needs credentials)
	$(CLI) bundle --competition $(ENSEMBLE_COMPETITION) push --ensemble $(ENSEMBLE)

clean:  ## remove caches (keeps .venv, data, models)
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .hypothesis

leaderboard: $(STAMP)  ## every run and submission in one table, by CV; COMPETITION=, PUBLIC="name=0.861", KAGGLE=<slug>
	$(PY) -m common.submit.leaderboard $(if $(COMPETITION),--competition $(COMPETITION)) $(if $(PUBLIC),--record $(PUBLIC)) $(if $(KAGGLE),--kaggle $(KAGGLE))

hubmap-pseudo: $(STAMP)  ## confident windows of the test slides by HUBMAP_ENSEMBLE -> data/hubmap/pseudo/<ensemble>/ (train with ARGS="data.pseudo.folder=...")
	$(CLI) pseudo --competition hubmap --config $(HUBMAP_ENSEMBLE) $(ARGS)

siim-pseudo: $(STAMP)  ## pseudo-labels from ENSEMBLE's confident test predictions -> data/siim/pseudo/<ensemble>/ (train with configs/pseudo.yaml)
	$(CLI) pseudo --competition siim --config $(ENSEMBLE) $(ARGS)
