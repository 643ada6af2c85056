"""benchmarks/gpu_check.py end to end in its CPU smoke mode (tiny shapes), so the GPU check cannot rot.

The GPU figures come from running it on a CUDA machine (docs/performance.md); here the same code
path runs on the CPU: the agreement check (CPU against itself), notebook 06's calls on a 4-bit
tiny model, and SDFT, SFT and TRL's SDFTTrainer in worker processes, interleaved.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_the_gpu_check_runs_end_to_end_in_cpu_smoke_mode(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--out", str(out),
                           "--work-dir", str(tmp_path / "models")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-smoke"
    agreement = report["agreement"]
    assert agreement["agree"], agreement
    for objective in ("sdft", "sft"):
        assert math.isfinite(agreement[objective]["loss_cpu"]) and agreement[objective]["loss_cpu"] >= 0
    notebook = report["notebook_06"]
    assert notebook["4bit"] and notebook["steps"] == notebook["records_on_disk"] == 1 and notebook["adapter_saved"], notebook
    methods = report["shapes"]["tiny bf16"]["methods"]
    for method in ("sdft", "sft", "trl"):
        assert methods[method]["s_per_step"] > 0, methods[method]
        assert methods[method]["fits"] == {"None": True}  # no cap on a CPU
    assert "gpu_check done" in done.stdout
