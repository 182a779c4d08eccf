# qgis_cloudmask — every target a person needs; `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SHARED_DATA ?= ../shared/data
DEMO_DIR ?= demo_output
APT_PACKAGES := qgis python3-qgis python3-venv python3-matplotlib python3-scipy gdal-bin xvfb xauth
export QT_QPA_PLATFORM ?= offscreen

.DEFAULT_GOAL := help
.PHONY: help setup test test-all lint demo screenshots bench survey package train time-to-solution export evaluate quantize shift report distill point-labels hpo darts clean

VERSION := $(shell sed -n 's/^version=//p' metadata.txt)

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sed 's/<version>/$(VERSION)/g' | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-13s %s\n", $$1, $$2}'

# The install step, done once: every target that needs the environment depends on this stamp,
# so `make test` or `make demo` alone set a fresh machine up. It is redone when a requirements
# or constraints file changes; `make setup` runs only this.
STAMP := $(VENV)/.setup-done
REQUIREMENTS := requirements.txt requirements-dev.txt requirements-train.txt constraints.txt

setup: $(STAMP) ## install QGIS (apt) and a venv with everything (idempotent; skipped when done)

$(STAMP): $(REQUIREMENTS)
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	else echo "apt: $(APT_PACKAGES) already installed"; fi
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -r requirements-dev.txt -r requirements-train.txt
	$(PY) -c "import qgis.core, osgeo.gdal, onnxruntime, torch; from training._torchvision_compat import smp; print('setup ok: QGIS', qgis.core.Qgis.QGIS_VERSION, '| onnxruntime', onnxruntime.__version__, '| torch', torch.__version__)"
	@touch $@

test: $(STAMP) ## run the test suite (headless; sets the machine up first if needed)
	$(PY) -m pytest

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check qgis_cloudmask training tests
	$(VENV)/bin/ruff format --check qgis_cloudmask training tests

demo: $(STAMP) ## the main job: a generated Sentinel-2 product zip masked through qgis_process (all outputs)
	$(PY) -m tests.support.demo --out $(DEMO_DIR)

screenshots: $(STAMP) ## real QGIS desktop (Xvfb) runs the algorithm -> PNG screenshots + JSON in docs/screenshots
	$(PY) -m tests.support.screenshots --out docs/screenshots

bench: $(STAMP) ## speed and peak memory: pipeline vs ideal, I/O threads, options, compression, batch workers, full tile -> docs/speed.md
	$(PY) -m tests.support.bench --markdown docs/speed.md $(BENCH_ARGS)

survey: $(STAMP) ## automatic radiometry on the real scenes of ../shared vs their records -> docs/radiometry-survey.md
	$(PY) -m tests.support.radiometry_survey --data-root $(SHARED_DATA)

package: $(STAMP) ## build dist/qgis_cloudmask-<version>.zip (plugin, model, README), for "Install from ZIP"
	$(PY) -m tests.support.package --out dist

train: $(STAMP) ## train the U-Net (config: training/configs/default.yaml)
	$(PY) -m training.train --config training/configs/default.yaml --data-root $(SHARED_DATA)

# Extra arguments of the run step, e.g. TTS_ARGS="--nproc 1 2 4" or TTS_ARGS="--device cuda".
TTS_ARGS ?=

time-to-solution: $(STAMP) ## one config trained with 1 and 2 processes (torchrun), wall time to a val IoU target (resumes; <= 25 min each) -> docs/time-to-solution.md
	$(PY) -m training.time_to_solution run --config training/configs/time_to_solution.yaml --data-root $(SHARED_DATA) $(TTS_ARGS)
	$(PY) -m training.time_to_solution report --config training/configs/time_to_solution.yaml

export: $(STAMP) ## export the best checkpoint to models/cloudmask.onnx
	$(PY) -m training.export --config training/configs/default.yaml --data-root $(SHARED_DATA)

# A second model for the ensemble rows of `make evaluate` (used only where the file exists).
ENSEMBLE_MODEL ?= runs/seed7/cloudmask.onnx

evaluate: $(STAMP) ## the model and its inference options (TTA, histogram matching, ENSEMBLE_MODEL) vs the teacher -> docs/inference-options.md
	$(PY) -m training.evaluate --data-root $(SHARED_DATA) $(foreach m,$(wildcard $(ENSEMBLE_MODEL)),--ensemble-model $(m)) --json docs/inference-options.json --markdown docs/inference-options.md

quantize: $(STAMP) ## int8 model (static, calibrated on training scenes) vs float32: agreement, speed, IoU -> runs/quantize/, docs/speed.md
	$(PY) -m training.quantize run --data-root $(SHARED_DATA)
	$(PY) -m training.quantize report

shift: $(STAMP) ## shift sensitivity of the model with and without TTA on real scenes -> docs/inference-options.md + figures
	$(PY) -m training.shift_sensitivity --data-root $(SHARED_DATA) --json docs/shift-sensitivity.json --markdown docs/inference-options.md --figures docs/figures

report: $(STAMP) ## write docs/training-report.md with its figures
	$(PY) -m training.report --config training/configs/default.yaml --data-root $(SHARED_DATA)

darts: $(STAMP) ## DARTS search of the decoder, derived net + baseline retrained, ONNX, report + all at one threshold -> docs/neural-arch-search.md (each resumes; ~5-6.5 h)
	$(PY) -m training.darts search --config training/configs/darts.yaml --data-root $(SHARED_DATA)
	$(PY) -m training.darts retrain --config training/configs/darts.yaml --data-root $(SHARED_DATA)
	$(PY) -m training.darts report --config training/configs/darts.yaml --data-root $(SHARED_DATA)
	$(PY) -m training.darts compare --config training/configs/darts.yaml --data-root $(SHARED_DATA)

distill: $(STAMP) ## knowledge distillation: ResNet-34 teacher, small student without/with KD, report (each resumes; ~5 h) -> docs/knowledge-distillation.md
	$(PY) -m training.distill teacher --config training/configs/distill.yaml --data-root $(SHARED_DATA)
	$(PY) -m training.distill student --config training/configs/distill.yaml --data-root $(SHARED_DATA)
	$(PY) -m training.distill report --config training/configs/distill.yaml --data-root $(SHARED_DATA)
	$(PY) -m training.distill compare --config training/configs/distill.yaml --data-root $(SHARED_DATA)

hpo: $(STAMP) ## Optuna TPE search (pruned short runs), retrain winner vs default, report (each resumes) -> docs/hyperparameter-optimization.md
	$(PY) -m training.hpo search --config training/configs/hpo.yaml --data-root $(SHARED_DATA)
	$(PY) -m training.hpo retrain --config training/configs/hpo.yaml --data-root $(SHARED_DATA)
	$(PY) -m training.hpo report --config training/configs/hpo.yaml --data-root $(SHARED_DATA)

point-labels: $(STAMP) ## point labels + partial focal CE: 16 short runs (resumable) -> docs/point-labels.md
	$(PY) -m training.point_labels run --config training/configs/point_labels.yaml --data-root $(SHARED_DATA)

clean: ## remove build and test leftovers (keeps the venv)
	rm -rf dist $(DEMO_DIR) .pytest_cache .qgis-settings
