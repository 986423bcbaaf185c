# Every target installs what it needs first (through the .venv stamp), so each works from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export YOLO_OFFLINE := true
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

DEMO_DIR := runs/demo

.PHONY: setup test demo bench clean

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
	$(PY) -m pytest

# The main job on the built-in synthetic dataset: generate -> prepare -> baseline submission -> validate -> score.
demo: $(STAMP)
	$(PY) train/make_synthetic.py --out $(DEMO_DIR)/data --train-studies 60 --test-studies 30 --seed 0
	$(PY) train/prepare.py --data-dir $(DEMO_DIR)/data --out $(DEMO_DIR)/prepared --size 256 --size 128 --workers 2
	$(PY) infer/baseline_submission.py --data-dir $(DEMO_DIR)/data --prepared $(DEMO_DIR)/prepared/meta.csv \
	  --out $(DEMO_DIR)/submission_baseline.csv
	$(PY) infer/validate_submission.py $(DEMO_DIR)/submission_baseline.csv --sample-submission $(DEMO_DIR)/data/sample_submission.csv
	$(PY) infer/score.py $(DEMO_DIR)/submission_baseline.csv --image-labels $(DEMO_DIR)/data/test_image_level.csv \
	  --study-labels $(DEMO_DIR)/data/test_study_level.csv

# Speed figures (docs/benchmarks.md). The training benchmark's short run suits the CPU; on a GPU use
# its defaults: python infer/benchmark.py training
bench: $(STAMP)
	$(PY) infer/benchmark.py reader --out runs/bench/reader.json
	$(PY) infer/benchmark.py training --steps 4 --repeats 3 --out runs/bench/training.json

clean:
	rm -rf runs $(VENV)
