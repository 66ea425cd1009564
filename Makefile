# Every target does its own set-up on a fresh machine: it creates .venv when missing and installs
# the project into it (pip resolves torch and torchvision from the registry).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8501
MODELS_DIR ?= models
SHAKESPEARE ?= ../shared/data/tinyshakespeare.txt
# make test runs the suite in this many processes (pytest-xdist; 0: in pytest's own process). Each
# test runs its models on one thread (tests/conftest.py), so one process per core: 2 on the
# project's 2-core CPU, where it took the suite from about 6 1/2 minutes to 4 1/2 (2026-12-06;
# 5 1/2 to 6 1/2 in two processes on 2026-12-07, with 1,908 tests (6 1/4 with 1,993 on 2026-12-08); 3 processes gained nothing
# steady).
TEST_WORKERS ?= 2

.PHONY: app test screenshots lint bench bench-long demo-models browser-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

## make app: serve the Streamlit app (captioning and text generation) on http://localhost:$(PORT)
app: $(STAMP)
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.headless true -- --models-dir "$(MODELS_DIR)"

## make test: the whole suite, browser test included (installs Debian's chromium when missing)
test: $(STAMP) browser-deps
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

## make screenshots: refresh the README's pictures (docs/screenshots/*.png), one per page of the app,
## with the browser test (`make test` writes its screenshots to a temporary folder instead)
screenshots: $(STAMP) browser-deps
	CRNN_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(PY) -m pytest tests/test_app_browser.py -q

browser-deps:
	@bash scripts/ensure_chromium.sh

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## make demo-models: retrain the two bundled demo models in models/ (CPU, about 28 minutes)
demo-models: $(STAMP)
	$(PY) -m bench.make_demo_models --models-dir "$(MODELS_DIR)" --shakespeare "$(SHAKESPEARE)"

## make bench: the CPU benchmarks that compare two ways side by side (ratios), in at most 20 minutes
## on the project's 2-core CPU; each prints its figures (docs/benchmarks.md records them)
bench: $(STAMP) browser-deps
	$(PY) bench/recurrent_core.py
	$(PY) bench/precision.py --repeats 2
	$(PY) bench/beam_search.py --threads 1 --precision fp32
	$(PY) bench/beam_search.py --threads 1 --precision bf16
	$(PY) bench/decode_step.py
	$(PY) bench/feature_cache.py --threads 1 --num-images 400
	$(PY) bench/shared_references.py --threads 2
	$(PY) bench/ddp_scaling.py --processes 2 --steps 40
	$(PY) bench/coco_scale.py --threads 1 --out runs/bench/coco_scale
	$(PY) bench/tokenize_scale.py
	$(PY) bench/image_loading.py
	$(PY) bench/curves_scale.py

## make bench-long: the training benchmarks (10-15 minutes each, about 50 minutes in all) and the
## full-size feature-cache and huge-text measurements; most of the README's results come from these
bench-long: $(STAMP)
	$(PY) bench/char_lm_shakespeare.py --minutes 10 --data "$(SHAKESPEARE)"
	$(PY) bench/captioner_scenes.py --minutes 15
	$(PY) bench/captioner_scenes.py --minutes 15 --preset hard --num-images 8000
	$(PY) bench/feature_cache.py --threads 1
	$(PY) bench/char_lm_huge_text.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
