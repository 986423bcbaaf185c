# Every target installs what it needs first (through the .venv stamp), so each works from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export YOLO_OFFLINE := true
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

DEMO_DIR := runs/demo

.PHONY: setup test demo train-all calibrate study-ablation trunk-ablation notebook kaggle-datasets kaggle-check kaggle-push serve bench bench-loop gpu-check clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The exact pins select torch 2.14.1 + torchvision 0.29.1; the check below fails the install otherwise.
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch, torchvision, torchvision.ops as o; o.nms(torch.zeros(1, 4), torch.zeros(1), 0.5); \
	  assert torch.__version__.startswith('2.14.1'), torch.__version__; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest --durations=10

# The main job on the built-in synthetic dataset: generate (SIIM layout + NIH + RSNA companions) ->
# train everything -> predict the test split -> validate -> score beside the trivial baselines.
demo: $(STAMP)
	$(PY) train/make_synthetic.py --out $(DEMO_DIR)/data --train-studies 100 --test-studies 40 --seed 0
	$(PY) train/make_synthetic.py --format nih --out $(DEMO_DIR)/nih --images 400 --seed 0
	$(PY) train/make_synthetic.py --format rsna --out $(DEMO_DIR)/rsna --images 60 --seed 0
	$(PY) train/train_all.py --data-dir $(DEMO_DIR)/data --nih-dir $(DEMO_DIR)/nih --rsna-dir $(DEMO_DIR)/rsna \
	  --out $(DEMO_DIR) --config train/configs/demo.yaml --no-progress
	$(PY) infer/make_submission.py --data-dir $(DEMO_DIR)/data --weights-dir $(DEMO_DIR)/weights \
	  --out $(DEMO_DIR)/submission.csv
	$(PY) infer/validate_submission.py $(DEMO_DIR)/submission.csv --sample-submission $(DEMO_DIR)/data/sample_submission.csv
	$(PY) infer/baseline_submission.py --data-dir $(DEMO_DIR)/data --prepared $(DEMO_DIR)/prepared/meta.csv \
	  --kind prior --out $(DEMO_DIR)/baseline_prior.csv
	$(PY) infer/baseline_submission.py --data-dir $(DEMO_DIR)/data --prepared $(DEMO_DIR)/prepared/meta.csv \
	  --kind prior-boxes --out $(DEMO_DIR)/baseline_fixed_boxes.csv
	$(PY) infer/draw_predictions.py --submission $(DEMO_DIR)/submission.csv --data-dir $(DEMO_DIR)/data \
	  --image-labels $(DEMO_DIR)/data/test_image_level.csv --study-labels $(DEMO_DIR)/data/test_study_level.csv \
	  --weights-dir $(DEMO_DIR)/weights --out $(DEMO_DIR)/predictions.png
	@echo; echo "== cross-validation (out-of-fold, $(DEMO_DIR)/report/cv_report.md) =="; cat $(DEMO_DIR)/report/cv_report.md
	@echo; echo "== synthetic test split =="
	$(PY) infer/score.py $(DEMO_DIR)/submission.csv $(DEMO_DIR)/baseline_prior.csv $(DEMO_DIR)/baseline_fixed_boxes.csv \
	  --image-labels $(DEMO_DIR)/data/test_image_level.csv --study-labels $(DEMO_DIR)/data/test_study_level.csv

# Everything on the real data: make train-all DATA=... [NIH=...] [RSNA=...] [CONFIG=...] [OUT=...]
# PSEUDO=test_dir [PSEUDO_META=test_meta.csv]: then pseudo-label those images and train round two (OUT/round2/weights).
CONFIG ?= train/configs/full.yaml
OUT ?= runs/full
train-all: $(STAMP)
	@test -n "$(DATA)" || { echo "usage: make train-all DATA=competition_dir_or_resized_copy [NIH=nih_dir] [RSNA=rsna_dir] [CONFIG=...] [OUT=...] [PSEUDO=test_dir [PSEUDO_META=table]]"; exit 2; }
	$(PY) train/train_all.py --data-dir $(DATA) --out $(OUT) --config $(CONFIG) \
	  $(if $(NIH),--nih-dir $(NIH)) $(if $(RSNA),--rsna-dir $(RSNA)) \
	  $(if $(PSEUDO),--pseudo-images $(PSEUDO)) $(if $(PSEUDO_META),--pseudo-test-meta $(PSEUDO_META))

# The ensemble's fusion and blending chosen out of fold (also train-all's last stage), reported on data
# the choice never saw, written into RUN/weights/manifest.json: make calibrate [RUN=...] [RUN_CONFIG=...]
RUN ?= runs/real256
# the run's own resolved config (train_all writes it), else the recipe
RUN_CONFIG ?= $(if $(wildcard $(RUN)/resolved_config.yaml),$(RUN)/resolved_config.yaml,train/configs/real256.yaml)
calibrate: $(STAMP)
	$(PY) infer/calibrate.py --run-dir $(RUN) --weights-dir $(RUN)/weights --config $(RUN_CONFIG) --no-progress

# The study model's ablation on the real-data recipe (after make train-all ... OUT=runs/real256):
# one change at a time, out of fold, beside the class prior (README "Results on real radiographs").
ABLATION_RUN ?= runs/real256
study-ablation: $(STAMP)
	$(PY) train/study_ablation.py --prepared $(ABLATION_RUN)/prepared/meta.csv --config train/configs/real256.yaml \
	  --out $(ABLATION_RUN)/study-ablation --no-progress

# Which trunk (scratch ResNet-18 against the ImageNet EfficientNet-Lite0/1/2) for the study classifier and
# Faster R-CNN of the same recipe, out of fold with wall times (README "Results on real radiographs").
trunk-ablation: $(STAMP)
	$(PY) train/trunk_ablation.py --prepared $(ABLATION_RUN)/prepared/meta.csv --config train/configs/real256.yaml \
	  --out $(ABLATION_RUN)/trunk-ablation --no-progress

# Kaggle delivery: the notebook (generated, committed), upload folders, upload.
WEIGHTS ?= runs/full/weights
notebook: $(STAMP)
	$(PY) kaggle/build_notebook.py

kaggle-datasets: $(STAMP)
	$(PY) kaggle/make_datasets.py --weights-dir $(WEIGHTS) --out runs/kaggle $(if $(OWNER),--owner $(OWNER))

# The notebook in a Kaggle-like second environment (Python 3.12, Kaggle's torch 2.10), installing from
# the wheels dataset offline as on Kaggle; compared with make_submission.py's output. Not in CI (3 GB).
kaggle-check: $(STAMP)
	$(PY) kaggle/kaggle_check.py $(if $(KAGGLE_PYTHON),--python $(KAGGLE_PYTHON)) $(if $(CHECK_WEIGHTS),--weights-dir $(CHECK_WEIGHTS))

kaggle-push: kaggle-datasets
	$(PY) kaggle/push.py runs/kaggle

# The web application on the demo's weights (or SERVE_WEIGHTS=...), on this machine only.
SERVE_WEIGHTS ?= runs/demo/weights
serve: $(STAMP)
	$(PY) infer/app.py --weights-dir $(SERVE_WEIGHTS)

# Speed figures (docs/benchmarks.md). The training benchmark's short run suits the CPU; on a GPU use
# its defaults: python infer/benchmark.py training
bench: $(STAMP)
	$(PY) infer/benchmark.py reader --out runs/bench/reader.json
	$(PY) infer/benchmark.py training --steps 4 --repeats 3 --out runs/bench/training.json
	$(PY) infer/benchmark.py inference --config train/configs/demo.yaml --images 16 --batch-size 4 --out runs/bench/inference.json

# What bounds each training loop (docs/benchmarks.md): the real256 recipe's kinds on real prepared images
# (LOOP_PREPARED: a train_all run's prepared/meta.csv), beside the settings before issue 56 ("before").
LOOP_PREPARED ?= runs/real256/prepared/meta.csv
bench-loop: $(STAMP)
	$(PY) infer/benchmark.py loop --prepared $(LOOP_PREPARED) --config train/configs/real256.yaml --out runs/bench/loop.json \
	  --variant before study.workers=2 study.channels_last=false frcnn.workers=2 frcnn.channels_last=false \
	  yolo.channels_last=false

clean:
	rm -rf runs $(VENV)

# The figures only a GPU gives (docs/benchmarks.md): make gpu-check [SMOKE=1: toy sizes on any device].
# On the bare GPU machine (no .venv, no network) see docs/benchmarks.md for the wheels it carries.
gpu-check: $(STAMP)
	$(PY) infer/gpu_check.py --out runs/gpu-check $(if $(SMOKE),--smoke)
