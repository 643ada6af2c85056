"""Seconds per optimizer step of SDFT vs SFT, on identical settings, one process each.

    python benchmarks/step_time.py                      # embedded model, CPU, 1 thread
    python benchmarks/step_time.py --threads 2 --steps 8

Each method runs in its own process so its peak RSS is its own. Reported: median
seconds per optimizer step after warm-up, median seconds per phase, rollout tokens
per second and peak memory. Writes JSON (default benchmarks/results/step_time.json)
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "step_time.json"


def settings(args: argparse.Namespace) -> dict:
    return {
        "model": args.model, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "lora_r": 16, "lora_target": "all-linear", "teacher": args.teacher, "vocab": args.vocab, "topk": args.topk,
        "alpha": 0.0, "threads": args.threads, "warmup_steps": args.warmup, "measured_steps": args.steps,
    }


def worker(method: str, args: argparse.Namespace) -> dict:
    """Run in a child process: train `warmup + steps` steps and summarise."""
    import torch

    from sdft_kit import Config, Trainer, load_examples
    from sdft_kit.cli import DEMO_DATA

    torch.set_num_threads(args.threads)
    config = Config().replace(
        model=args.model, method=method, steps=args.warmup + args.steps, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, lora_r=16, teacher=args.teacher, vocab=args.vocab, topk=args.topk,
        alpha=0.0, threads=args.threads, learning_rate=5e-4, seed=0,
    )
    trainer = Trainer(config, load_examples(DEMO_DATA))
    records = trainer.train(progress=False)[args.warmup:]
    phases = {k: statistics.median(r["seconds"][k] for r in records) for k in records[0]["seconds"]}
    rollout_s = sum(r["seconds"]["rollout"] for r in records)
    return {
        "s_per_step": statistics.median(r["seconds"]["total"] for r in records),
        "phases_s": phases,
        "tokens_per_step": statistics.median(r["tokens"] for r in records),
        "rollout_tokens_per_s": sum(r["tokens"] for r in records) / rollout_s if rollout_s else None,
        "peak_rss_mb": records[-1]["peak_mem_mb"],
        "torch_threads": torch.get_num_threads(),
    }


def run_child(method: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", method, *argv], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{method} benchmark failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, pinned and reported")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--teacher", default="base")
    parser.add_argument("--vocab", default="topk")
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="measured steps after warm-up")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    argv = [a for a in sys.argv[1:]]
    start = time.perf_counter()
    results = {m: run_child(m, argv) for m in ("sdft", "sft")}
    sdft, sft = results["sdft"], results["sft"]
    report = {
        "settings": settings(args),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "threads": args.threads,
        "sdft_s_per_step": sdft["s_per_step"],
        "sft_s_per_step": sft["s_per_step"],
        "trl_sdft_s_per_step": None,  # TRL comparison: not measured by this script yet
        "ratio_sdft_sft": sdft["s_per_step"] / sft["s_per_step"],
        "ratio_sdft_trl": None,
        "methods": results,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"embedded model, batch {args.batch_size}, {args.max_new_tokens} new tokens, LoRA r16, "
          f"teacher {args.teacher}, vocab {args.vocab}, {args.threads} thread(s)")
    print(f"{'method':<8}{'s/step':>9}{'rollout':>9}{'teacher':>9}{'student':>9}{'optim':>8}{'tok/s':>8}{'peak RSS':>11}")
    for name, r in results.items():
        p = r["phases_s"]
        tps = f"{r['rollout_tokens_per_s']:.0f}" if r["rollout_tokens_per_s"] else "-"
        print(f"{name:<8}{r['s_per_step']:>9.2f}{p['rollout']:>9.2f}{p['teacher']:>9.2f}{p['student']:>9.2f}"
              f"{p['optimizer']:>8.2f}{tps:>8}{r['peak_rss_mb']:>8.0f} MB")
    print(f"SDFT / SFT = {report['ratio_sdft_sft']:.2f}x   (written to {args.out})")


if __name__ == "__main__":
    main()
