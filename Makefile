# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
TORCH_VERSION := 2.13.0
DEMO_OUT ?= demo_output

.PHONY: demo test test-fast install pacs clean help

help:
	@echo "make demo   - create .venv, install, run the main job on the bundled demo case"
	@echo "make test   - create .venv, install, run the whole test suite"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: the tested version (a CPU build here); later installs then keep it.
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	# The constraint keeps that torch: nnunetv2 (test extra) pulls the newest torchvision, which wants a newer torch.
	echo "torch==$(TORCH_VERSION)" > $(VENV)/constraints.txt
	$(PIP) install --quiet -c $(VENV)/constraints.txt -e ".[test,slicer-testing]"
	touch $@

install: $(VENV)/.installed

# Debian packages the DICOM tests use: Orthanc + DICOMweb plugin, dicom3tools (a no-op where present).
pacs:
	bash .ci/install_test_packages.sh

demo: $(VENV)/.installed
	$(VENV)/bin/hbseg demo -o $(DEMO_OUT)

test: $(VENV)/.installed pacs
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed pacs
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
