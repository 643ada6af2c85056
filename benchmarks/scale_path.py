"""Step time of the scale path on this machine: fp32 vs 4-bit NF4 (bitsandbytes' CPU backend), and
one process vs two (accelerate launch, gloo), on the same global batch.

    python benchmarks/scale_path.py --rounds 3            # writes benchmarks/results/scale_path.json

Each configuration is a real `sdft-kit train` run (embedded model, 1 thread per process, the
same seed and data); the configurations run one after another in each round, in an order that
rotates from round to round, so a change of machine load hits them alike. Per configuration:
the median seconds per step (each step's `seconds.total` from metrics.jsonl, the first step of
each run left out as warm-up) with its min-max over rounds, and per-round ratios to fp32 with
one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "fp32, 1 process": ([], 1),
    "nf4, 1 process": (["--load-in-4bit"], 1),
    "fp32, 2 processes": ([], 2),
}


def run(name: str, method: str, args: argparse.Namespace, out: Path) -> list[float]:
    flags, processes = CONFIGS[name]
    batch = args.batch_size // processes  # the same global batch
    train = ["-m", "sdft_kit.cli", "train", "--data", "sdft_kit/samples/demo.jsonl", "--out", str(out),
             "--method", method, "--steps", str(args.steps), "--batch-size", str(batch), "--max-new-tokens",
             str(args.max_new_tokens), "--skip-check", "--threads", "1", "--seed", "0", "--report-to", "none", *flags]
    if processes == 1:
        command = [sys.executable, *train]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *train]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["seconds"]["total"] for r in records[1:]]


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="steps per run (the first is warm-up)")
    parser.add_argument("--methods", default="sft,sdft")
    parser.add_argument("--batch-size", type=int, default=4, help="global batch (split over the processes)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_path.json"))
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    names = list(CONFIGS)
    per_round: dict[str, list[float]] = {f"{m}: {n}": [] for m in methods for n in names}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for method in methods:
                for name in order:
                    seconds = run(name, method, args, Path(tmp) / f"{method}-{r}-{names.index(name)}")
                    per_round[f"{method}: {name}"].append(statistics.median(seconds))
                    print(f"round {r + 1}: {method}, {name}: {statistics.median(seconds):.2f} s/step", flush=True)
    results = {key: spread(v) for key, v in per_round.items()}
    ratios = {}
    for method in methods:
        base = per_round[f"{method}: fp32, 1 process"]
        for name in names[1:]:
            ratios[f"{method}: {name} / fp32, 1 process"] = spread([x / y for x, y in
                                                                  zip(per_round[f"{method}: {name}"], base)])
    report = {"settings": vars(args), "machine": {"cpu": platform.processor() or platform.machine(),
                                                  "cores": os.cpu_count(), "python": platform.python_version()},
              "s_per_step": results, "ratios_per_round": ratios, "wall_s": round(time.perf_counter() - start)}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for key, s in results.items():
        print(f"{key:<28} {s['median']:.2f} s/step ({s['min']:.2f}-{s['max']:.2f})")
    for key, s in ratios.items():
        print(f"{key}: {s['median']:.2f}x per round (min {s['min']:.2f}, max {s['max']:.2f})")


if __name__ == "__main__":
    main()
