# Every target sets itself up on a fresh machine: a project venv, the project
# installed into it, and the offline CASA/astropy/Prefect runtime configured.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.contimg-installed
DEMO_DIR ?= demo-data

.PHONY: setup demo test bench serve clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml contimg/runtime.py
	@# WSClean, the default imager, from Debian's packages where this machine allows it (root and
	@# apt-get); without it imaging uses CASA tclean (README, Imaging).
	command -v wsclean >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -qq --no-install-recommends wsclean >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends wsclean >/dev/null 2>&1; }; }; } || \
	  echo "wsclean not installed (no root/apt-get here): imaging will use CASA tclean"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m contimg.runtime install
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/contimg demo --workdir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/simulate.py
	$(PY) benchmarks/catalog.py
	$(PY) benchmarks/convert.py
	$(PY) benchmarks/calibration.py
	$(PY) benchmarks/imaging.py

serve: $(STAMP)
	$(VENV)/bin/contimg serve

clean-demo:
	rm -rf $(DEMO_DIR)
