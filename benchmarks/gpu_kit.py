"""Prepare the carry folder for a lent GPU machine (`make gpu-kit`): wheels it lacks, a tokenizer, the command.

    python benchmarks/gpu_kit.py            # -> .gpu-kit/ (ignored by git), checked to fit 64 MiB

The lent machine (an H200; Python 3.12; torch 2.11 + CUDA, transformers, peft, accelerate,
pyarrow, pandas; no network) lacks bitsandbytes, TRL, datasets and sdft-kit's small
dependencies. Their wheels are downloaded here (manylinux x86_64, CPython 3.12, no
dependencies resolved: each one named), with the embedded model's tokenizer (the random-weight
models of benchmarks/model_shapes.py use it; its 270 MB of weights stay here). The folder and
the working tree travel together within 64 MiB. `.gpu-kit/COMMAND` is the one line to run there
(its output, gpu_check.json, lands in $OUT).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / ".gpu-kit"
LIMIT_MB = 64
# what the lent machine lacks (its package list: pip list there, read 2026-11): the 4-bit path, TRL's
# SDFTTrainer and what it imports, and sdft-kit's own small dependencies
WHEELS = ["bitsandbytes", "trl", "datasets", "dill", "multiprocess", "rouge-score", "nltk", "gguf"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64"]
COMMAND = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
           ".gpu-kit/wheels/*.whl && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 "
           "python3 benchmarks/gpu_check.py --tokenizer .gpu-kit/tokenizer --out $OUT/gpu_check.json --budget-s 420")


def tree_mb() -> float:
    """What the working tree sends (tracked and untracked, not ignored), in MiB."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file()) / 2**20


def main() -> None:
    from sdft_kit.models import embedded_model_dir

    wheels = KIT / "wheels"
    shutil.rmtree(KIT, ignore_errors=True)
    wheels.mkdir(parents=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(wheels), *WHEELS],
                   check=True)
    tokenizer = KIT / "tokenizer"
    tokenizer.mkdir()
    for f in embedded_model_dir().iterdir():  # the tokenizer and configs, not the weights
        if f.suffix in (".json", ".jinja", ".txt") and f.name != "config.json":
            shutil.copy(f, tokenizer / f.name)
    kit_mb = sum(f.stat().st_size for f in KIT.rglob("*") if f.is_file()) / 2**20
    total = kit_mb + tree_mb()
    (KIT / "COMMAND").write_text(COMMAND + "\n")
    for f in sorted(wheels.iterdir()):
        print(f"  {f.name}: {f.stat().st_size / 2**20:.1f} MiB")
    print(f"kit {kit_mb:.1f} MiB + working tree {total - kit_mb:.1f} MiB = {total:.1f} MiB (limit {LIMIT_MB} MiB)")
    if total > LIMIT_MB:
        raise SystemExit(f"too big to carry: {total:.1f} MiB > {LIMIT_MB} MiB")
    print(f"run there, with carry ['.gpu-kit'] and a timeout of 600 s:\n{COMMAND}")


if __name__ == "__main__":
    main()
