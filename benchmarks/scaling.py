"""How an SDFT and an SFT step grow with the work: completion length, batch and model size (CPU, 1 thread).

    python benchmarks/scaling.py                       # the three sweeps -> benchmarks/results/scaling.json
    python benchmarks/scaling.py --sweeps length --steps 3

Each point runs in its own process (so its peak RSS is its own): a random-weight model of a
real shape (benchmarks/model_shapes.py: SmolLM2-135M/360M, Qwen3-0.6B/1.7B; nothing is
downloaded), LoRA r16 on all linear layers, the bundled 24 demonstrations, the base teacher,
top-100 forward KL, transformers' generate for the rollouts (rollout.engine 'hf': the same engine
at every size, no engine start to amortise), one warm-up step, then `--steps` measured steps
(median). Random weights almost never sample an end token, so every rollout runs its full length.

Sweeps (the other settings at their base values: SmolLM2-135M, batch 2, 32 new tokens):
    length  completion tokens 32, 64, 128, 256 (SDFT; SFT trains on the demonstrations, whose
            length does not change: measured at the two ends only)
    batch   prompts per step 1, 2, 4, 8, 16
    model   SmolLM2-135M, SmolLM2-360M, Qwen3-0.6B, Qwen3-1.7B

For each sweep and method: a least-squares line (seconds = a + b x, with R^2) and the log-log
slope (seconds ~ x^k: k = 1 is linear growth) for step seconds and for peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from model_shapes import parameter_count  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "scaling.json"
BASE = dict(shape="SmolLM2-135M", batch=2, tokens=32)
SWEEPS = {
    "length": ("tokens", [32, 64, 128, 256]),
    "batch": ("batch", [1, 2, 4, 8, 16]),
    "model": ("shape", ["SmolLM2-135M", "SmolLM2-360M", "Qwen3-0.6B", "Qwen3-1.7B"]),
}


def run_point(point: dict, steps: int) -> dict:
    """One configuration's step figures (in this process)."""
    import torch

    from model_shapes import random_model
    from sdft_kit import SAMPLE_DATA, Config, Trainer, add_lora, load_examples
    from sdft_kit.models import peak_rss_mb

    torch.set_num_threads(1)
    start = time.perf_counter()
    model, tokenizer = random_model(point["shape"])
    config = Config().replace(method=point["method"], steps=10_000, batch_size=point["batch"],
                              max_new_tokens=point["tokens"], engine="hf", lora_r=16, teacher="base", vocab="topk",
                              topk=100, alpha=0.0, threads=1, seed=0)
    model = add_lora(model, config.model, seed=0)
    trainer = Trainer(config, load_examples(SAMPLE_DATA), model=model, tokenizer=tokenizer)
    load_s = time.perf_counter() - start
    trainer.train_step()  # warm-up
    records, cpu = [], []
    for _ in range(steps):
        begin = time.process_time()
        records.append(trainer.train_step())
        cpu.append(time.process_time() - begin)
    return {**point, "load_s": round(load_s, 1), "s_per_step": statistics.median(r["seconds"]["total"] for r in records),
            "s_min": min(r["seconds"]["total"] for r in records), "s_max": max(r["seconds"]["total"] for r in records),
            "cpu_s_per_step": statistics.median(cpu),
            "phases_s": {k: statistics.median(r["seconds"][k] for r in records) for k in records[0]["seconds"]},
            "tokens_per_step": statistics.median(r["tokens"] for r in records),
            "peak_rss_mb": round(peak_rss_mb(), 1), "steps": steps}


def available_mb() -> float:
    """MemAvailable from /proc/meminfo (Linux), in MB."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 1024


def fit(xs: list[float], ys: list[float]) -> dict:
    """Least-squares line y = a + b x with R^2, and the log-log slope k (y ~ x^k)."""
    line = statistics.linear_regression(xs, ys)
    mean = statistics.fmean(ys)
    residual = sum((y - line.intercept - line.slope * x) ** 2 for x, y in zip(xs, ys))
    total = sum((y - mean) ** 2 for y in ys)
    loglog = statistics.linear_regression([math.log(x) for x in xs], [math.log(y) for y in ys])
    return {"a": line.intercept, "b": line.slope, "r2": 1 - residual / total if total else 1.0,
            "loglog_slope": loglog.slope}


def run_points(points: list[dict], args, env: dict, start: float) -> tuple[dict, list]:
    """Each point in its own process, `args.jobs` at a time; the cheapest first (an interrupted run keeps the most points). Returns results by point, and the
    points not measured (with why)."""
    from concurrent.futures import ThreadPoolExecutor

    # points measured by an earlier, interrupted run (same --steps) are kept: the run resumes
    partial = args.out.with_suffix(".partial.json")
    measured = json.loads(partial.read_text()) if partial.is_file() else {}
    measured = {k: v for k, v in measured.items() if v.get("steps") == args.steps}
    dropped = []
    lock = threading.Lock()

    def one(point: dict) -> None:
        name = json.dumps(point, sort_keys=True)
        if name in measured:
            return
        if args.report_only:
            dropped.append({**point, "why": "not measured in the time the run had"})
            return
        # fp32 weights, the student's copy only (LoRA's optimizer state is small), plus 1.5 GB of work space;
        # the machine is shared: a point that does not fit is reported, not run
        need = parameter_count(point["shape"]) * 4 / 2**20 + 1500
        why = f"needs ~{need:.0f} MB, {available_mb():.0f} MB available" if need > available_mb() else None
        if why is None:
            try:
                done = subprocess.run([sys.executable, __file__, "--point", json.dumps(point), "--steps",
                                       str(args.steps)], capture_output=True, text=True, env=env, timeout=args.timeout)
                if done.returncode == 0:
                    with lock:
                        measured[name] = json.loads(done.stdout.strip().splitlines()[-1])
                        partial.write_text(json.dumps(measured, indent=1) + "\n")
                    r = measured[name]
                    print(f"{name}: {r['s_per_step']:.2f} s/step (CPU {r['cpu_s_per_step']:.2f} s), peak RSS "
                          f"{r['peak_rss_mb']:.0f} MB [{time.perf_counter() - start:.0f} s]", flush=True)
                    return
                why = f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
            except subprocess.TimeoutExpired:
                why = f"no result within {args.timeout:.0f} s"
        dropped.append({**point, "why": why})
        print(f"{name}: NOT MEASURED ({why})", flush=True)

    order = sorted(points, key=lambda p: (parameter_count(p["shape"]) * p["batch"] * (p["tokens"] if p["method"] ==
                                                                                        "sdft" else 32)))
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, order))
    return measured, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated, from {', '.join(SWEEPS)}")
    parser.add_argument("--methods", default="sdft,sft")
    for sweep, (key, values) in SWEEPS.items():
        parser.add_argument(f"--{sweep}-values", default=",".join(map(str, values)), help=f"the {key} values of '{sweep}'")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per point (after one warm-up step)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: fit and write what an interrupted run measured (its .partial.json)")
    parser.add_argument("--jobs", type=int, default=1, help="points measured at once (each one thread)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a point may take before it is dropped")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(run_point(json.loads(args.point), args.steps)), flush=True)
        return

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    wanted = []  # (sweep, method, point); a point shared by sweeps (the base) runs once
    for sweep in args.sweeps.split(","):
        key = SWEEPS[sweep][0]
        values = [v if key == "shape" else int(v) for v in getattr(args, f"{sweep}_values").split(",")]
        for method in args.methods.split(","):
            # SFT's step does not depend on the completion length (it trains on the demonstrations): the base only
            for value in ([BASE[key]] if (sweep, method) == ("length", "sft") else values):
                wanted.append((sweep, method, {**BASE, key: value, "method": method}))
    unique = list({json.dumps(p, sort_keys=True): p for _, _, p in wanted}.values())
    measured, dropped = run_points(unique, args, env, start)
    results = {}
    for sweep, method, point in wanted:
        if json.dumps(point, sort_keys=True) in measured:
            results.setdefault(sweep, {}).setdefault(method, []).append(measured[json.dumps(point, sort_keys=True)])
    fits = {}
    for sweep, methods in results.items():
        key = SWEEPS[sweep][0]
        for method, points in methods.items():
            if len({p[key] for p in points}) < 2:
                continue
            xs = [parameter_count(p["shape"]) / 1e6 if key == "shape" else p[key] for p in points]
            fits[f"{sweep}/{method}"] = {"x": "parameters (millions)" if key == "shape" else key,
                                         "seconds": fit(xs, [p["s_per_step"] for p in points]),
                                         "cpu_seconds": fit(xs, [p["cpu_s_per_step"] for p in points]),
                                         "peak_rss_mb": fit(xs, [p["peak_rss_mb"] for p in points])}
    report = {"base": BASE, "values": {sweep: getattr(args, f"{sweep}_values") for sweep in SWEEPS}, "steps": args.steps, "threads": 1, "engine": "hf", "cores": os.cpu_count(),
              "load_average_end": os.getloadavg(), "results": results, "fits": fits, "dropped": dropped,
              "wall_s": round(time.perf_counter() - start)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, f in fits.items():
        s, m = f["seconds"], f["peak_rss_mb"]
        print(f"{name}: s/step = {s['a']:.2f} + {s['b']:.4f} x (R^2 {s['r2']:.3f}), log-log slope {s['loglog_slope']:.2f}; "
              f"peak RSS = {m['a']:.0f} + {m['b']:.2f} x MB (log-log slope {m['loglog_slope']:.2f}); x = {f['x']}",
              flush=True)
    print(f"(written to {args.out}; wall {report['wall_s']} s)", flush=True)


if __name__ == "__main__":
    main()
