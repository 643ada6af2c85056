"""What checkpointing every step costs: seconds per checkpoint against seconds per step, interleaved.

    python benchmarks/checkpoint_cost.py              # 5 rounds, SmolLM2-135M, LoRA r16, EMA teacher
    python benchmarks/checkpoint_cost.py --rounds 8

One SDFT and one SFT trainer (the step benchmark's settings: batch 4, 64 new tokens, 1 thread,
the default LoRA r16 on all linear layers and EMA teacher) each write into a run directory on
the disk of --dir. Each round times, in turn: an SFT step, its checkpoint, an SDFT step, its
checkpoint (adapter + optimizer + scheduler + teacher + RNG, every file fsynced, sealed and
renamed into place, as `Trainer.steps()` does after every step by default). Reported: the median
and min-max of each, the checkpoint's size, and its median share of each method's step.
Writes JSON (default benchmarks/results/checkpoint_cost.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "checkpoint_cost.json"


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the run directories go (default: the system temp dir)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sdft_kit import SAMPLE_DATA, Config, Trainer, load_examples

    examples = load_examples(SAMPLE_DATA)
    settings = dict(steps=1000, batch_size=4, max_new_tokens=64, threads=1, save_every=1000)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        trainers = {method: Trainer(Config().replace(method=method, **settings), examples, Path(folder) / method)
                    for method in ("sft", "sdft")}
        for trainer in trainers.values():  # warm-up: one step and one checkpoint each
            trainer.train_step()
            trainer.save_checkpoint()
        times = {f"{method} {what}": [] for method in trainers for what in ("step", "checkpoint")}
        for round_ in range(args.rounds):
            for method, trainer in trainers.items():
                times[f"{method} step"].append(_timed(trainer.train_step))
                times[f"{method} checkpoint"].append(_timed(trainer.save_checkpoint))
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
        size = sum(f.stat().st_size for f in (Path(folder) / "sdft" / "checkpoint").rglob("*") if f.is_file())
    report = {
        "settings": {**settings, "model": "embedded (SmolLM2-135M-Instruct, fp32)", "lora_r": 16, "teacher": "ema",
                     "rounds": args.rounds, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"},
        "checkpoint_mb": round(size / 2**20, 1),
        "seconds": {name: {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
                           "max": round(max(v), 3)} for name, v in times.items()},
        "checkpoint_share_of_step": {method: round(statistics.median(
            c / s for c, s in zip(times[f"{method} checkpoint"], times[f"{method} step"])), 3) for method in trainers},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"checkpoint: {report['checkpoint_mb']} MB")
    for name, s in report["seconds"].items():
        print(f"{name:>16}: {s['median']:.3f} s (min {s['min']:.3f}, max {s['max']:.3f})")
    for method, share in report["checkpoint_share_of_step"].items():
        print(f"checkpoint / {method} step: {share:.1%} (median of per-round ratios)")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
