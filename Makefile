# The README's two commands: `make demo` (main job on the embedded synthetic data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel; GPU users install a CUDA build of torch into the venv first (see README), then `make install`.
TORCH ?= torch==2.13.0

.PHONY: venv install test demo bench clean

venv: $(VENV)/.installed
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The main job on the embedded synthetic data: sweep (Ray Tune + Optuna + ASHA), then retrain the best
# config and both baselines over 3 seeds and print Table 2 / Table 3. About 10 minutes on 2 CPU cores.
demo: $(VENV)/.installed
	$(BIN)/supuq sweep --dataset synthetic
	$(BIN)/supuq best --dataset synthetic --retrain --baselines --seeds 3 --report runs/report.html
	@$(BIN)/supuq ui --print-links

bench: $(VENV)/.installed
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
