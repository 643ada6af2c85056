"""bitsandbytes only for 4-bit models, with no Hub lookup and no noise; sdft-kit offline never waits on the network.

Each test runs a fresh process (what is imported is per process) through tests/no_network.py, which refuses
every look-up and connection off this machine at once and reports them, with HF_HUB_OFFLINE unset: as on a
machine with no network where nobody set it."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from no_network import read_report

TESTS = Path(__file__).resolve().parent
# What bitsandbytes (>= 0.49) and the `kernels` package print when the Hub kernel lookup fails, and torch's
# warning when training goes through bitsandbytes' CPU inference kernel.
NOISE = ("kernels-community", "Failed to load", "publisher trust", "autograd kernel was not registered")
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


def _run_offline(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["OMP_NUM_THREADS"] = "1"
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(TESTS / "no_network.py"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=TESTS.parent)
    return done, read_report(done.stderr), time.monotonic() - start


FLOAT_THEN_4BIT = """
import logging, sys
import torch
from sdft_kit import ModelConfig, add_lora, load_model

torch.set_num_threads(1)
add_lora(load_model("embedded")[0])
print("FLOAT", "bitsandbytes" in sys.modules, "peft" in sys.modules)
if "4bit" in sys.argv:
    kernels = sys.modules.get("kernels")
    four_bit = ModelConfig(load_in_4bit=True)
    model = add_lora(load_model("embedded", four_bit)[0], four_bit)
    from peft.tuners.lora.bnb import Linear4bit  # peft's 4-bit LoRA layer: peft saw bitsandbytes once imported
    print("LORA_4BIT_LAYERS", sum(isinstance(m, Linear4bit) for m in model.modules()))
    print("KERNELS_KEPT", sys.modules.get("kernels") is kernels, logging.getLogger("bitsandbytes").level)
"""


def test_a_16_bit_model_never_imports_bitsandbytes_and_a_4_bit_one_later_gets_its_4_bit_layers(tmp_path):
    script = tmp_path / "float_then_4bit.py"
    script.write_text(FLOAT_THEN_4BIT)
    done, report, _ = _run_offline(str(script), *(["4bit"] if HAS_BITSANDBYTES else []))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FLOAT False True" in done.stdout  # peft wrapped the model without importing bitsandbytes
    assert report["attempts"] == [], report
    printed = done.stdout + done.stderr
    assert not [noise for noise in NOISE if noise in printed], printed[-3000:]
    if HAS_BITSANDBYTES:
        assert "LORA_4BIT_LAYERS 210" in done.stdout, done.stdout  # q, k, v, o, gate, up, down in 30 layers
        assert "KERNELS_KEPT True 0" in done.stdout  # `kernels` and bitsandbytes' logger as they were
        assert report["imported"]["bitsandbytes"]


def test_a_training_run_offline_never_reaches_the_network_nor_imports_bitsandbytes_nor_prints_noise(tmp_path):
    done, report, seconds = _run_offline(
        "-m", "sdft_kit.cli", "train", "--data", "sdft_kit/samples/demo.jsonl", "--out", str(tmp_path / "run"),
        "--steps", "1", "--batch-size", "1", "--max-new-tokens", "4", "--skip-check", "--threads", "1",
        "--report-to", "none")
    assert done.returncode == 0 and "step   1/1" in done.stdout, done.stderr[-3000:]
    assert report["attempts"] == [] and report["imported"]["peft"] and not report["imported"]["bitsandbytes"], report
    printed = done.stdout + done.stderr
    assert not [noise for noise in NOISE if noise in printed], printed[-3000:]
    # about 15 s on an idle 2-core machine, 80 s on one at load 15; waiting on the Hub took minutes (issue 26)
    assert seconds < 240, seconds
