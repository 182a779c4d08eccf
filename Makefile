# qgis_cloudmask — every target a person needs; `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SHARED_DATA ?= ../shared/data
DEMO_DIR ?= demo_output
APT_PACKAGES := qgis python3-qgis python3-venv python3-matplotlib gdal-bin
export QT_QPA_PLATFORM ?= offscreen

.DEFAULT_GOAL := help
.PHONY: help setup test test-all lint demo bench package train export evaluate report clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

setup: ## install QGIS (apt) and a venv with everything (idempotent)
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	else echo "apt: $(APT_PACKAGES) already installed"; fi
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -r requirements-dev.txt -r requirements-train.txt
	$(PY) -c "import qgis.core, osgeo.gdal, onnxruntime, torch; from training._torchvision_compat import smp; print('setup ok: QGIS', qgis.core.Qgis.QGIS_VERSION, '| onnxruntime', onnxruntime.__version__, '| torch', torch.__version__)"

test: ## run the test suite (headless)
	$(PY) -m pytest

lint: ## ruff lint + format check
	$(VENV)/bin/ruff check qgis_cloudmask training tests
	$(VENV)/bin/ruff format --check qgis_cloudmask training tests

demo: ## run the algorithm end to end through qgis_process on a generated raster
	$(PY) -m tests.support.demo --out $(DEMO_DIR)

bench: ## throughput and peak memory of the tiled inference
	$(PY) -m tests.support.bench

package: ## build dist/qgis_cloudmask.zip, installable with "Install from ZIP"
	$(PY) -m tests.support.package --out dist

train: ## train the U-Net (config: training/configs/default.yaml)
	$(PY) -m training.train --config training/configs/default.yaml --data-root $(SHARED_DATA)

export: ## export the best checkpoint to models/cloudmask.onnx
	$(PY) -m training.export --config training/configs/default.yaml --data-root $(SHARED_DATA)

evaluate: ## IoU/F1/precision/recall of models/cloudmask.onnx vs the teacher on labelled chips
	$(PY) -m training.evaluate --data-root $(SHARED_DATA)

report: ## write docs/training-report.md with its figures
	$(PY) -m training.report --config training/configs/default.yaml --data-root $(SHARED_DATA)

clean: ## remove build and test leftovers (keeps the venv)
	rm -rf dist $(DEMO_DIR) .pytest_cache .qgis-settings
