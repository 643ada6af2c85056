"""What reusing rollouts costs and saves: rollout.steps_per_generation 1, 2, 4, 8 on the bundled demo.

    python benchmarks/amortized.py --seeds 3 --steps 16            # writes benchmarks/results/amortized.json

Each run trains the demo's settings (the default preset, embedded model fp32, batch 4, 48 new tokens,
1 thread, the hf engine unless --engine) from one seed, in its own process. Runs are interleaved: every round runs each setting once,
in a rotated order, so a change of load on the shared machine falls on all settings alike. Per run:
- seconds per step (the run's training time / steps: a reused step has no rollout, so the mean over
  whole generations is the fair figure), and the rollout seconds;
- the records' mean KL (on the batch trained, so stale for reused steps) and importance weight;
- an on-policy KL every 4 steps: teacher-vs-student KL on fresh rollouts of 8 fixed prompts (seeded,
  the training RNG untouched), the same for every setting: what staleness costs in what was learnt;
- the demo's ROUGE-L F1 of the student's 24 greedy answers to the demonstrations after training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "amortized.json"
EVAL_EVERY, EVAL_PROMPTS = 4, 8


def on_policy_kl(trainer) -> float:
    """Mean per-token KL(teacher || student) on fresh rollouts of the first EVAL_PROMPTS prompts, seeded."""
    import torch

    from sdft_kit.methods import make_batch

    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1234)
        batch = make_batch(trainer, list(range(EVAL_PROMPTS)))
        student = trainer.method.objective(trainer.model, trainer.teacher, batch, trainer.config).student
    mask = batch.completion_mask.bool()
    return float(student.per_token[mask].mean())


def run_one(k: int, seed: int, steps: int, engine: str = "hf") -> dict:
    from sdft_kit import Config, Trainer, load_examples
    from sdft_kit.cli import demo_metrics
    from sdft_kit.data import SAMPLE_DATA
    from sdft_kit.models import peak_rss_mb

    examples = load_examples(SAMPLE_DATA)
    config = Config().replace(steps=steps, batch_size=4, max_new_tokens=48, threads=1, seed=seed,
                              steps_per_generation=k, report_to="none", engine=engine)
    trainer = Trainer(config, examples)
    kl_curve = {0: on_policy_kl(trainer)}
    records = []
    start = time.perf_counter()
    for record in trainer.steps():
        records.append(record)
        if record["step"] % EVAL_EVERY == 0:
            t0 = time.perf_counter()
            kl_curve[record["step"]] = on_policy_kl(trainer)
            start += time.perf_counter() - t0  # evaluation is not training time
    train_s = time.perf_counter() - start
    after = demo_metrics(trainer.model, trainer.tokenizer, examples)
    return {"k": k, "seed": seed, "steps": steps, "train_s": train_s, "s_per_step": train_s / steps,
            "rollout_s": sum(r["seconds"]["rollout"] for r in records),
            "record_kl": [r["mean_kl"] for r in records], "is_weight": [r["is_weight"] for r in records],
            "on_policy_kl": kl_curve, "rouge_l_after": after["similarity"], "peak_rss_mb": peak_rss_mb()}


def summarize(runs: list[dict]) -> dict:
    table = {}
    for k in sorted({r["k"] for r in runs}):
        mine = [r for r in runs if r["k"] == k]
        per_step = [r["s_per_step"] for r in mine]
        curve_steps = sorted(mine[0]["on_policy_kl"], key=int)
        table[k] = {
            "s_per_step": {"median": statistics.median(per_step), "min": min(per_step), "max": max(per_step)},
            "rollout_s_per_step": statistics.median(r["rollout_s"] / r["steps"] for r in mine),
            "on_policy_kl": {step: statistics.mean(r["on_policy_kl"][step] for r in mine) for step in curve_steps},
            "rouge_l_after": {"mean": statistics.mean(r["rouge_l_after"] for r in mine),
                              "values": [round(r["rouge_l_after"], 3) for r in mine]},
            "runs": len(mine)}
    base = table[min(table)]["s_per_step"]["median"]
    for row in table.values():
        row["speedup_vs_1"] = base / row["s_per_step"]["median"]
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,4,8")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--engine", default="hf", help="rollout engine (hf: a vLLM engine's start-up in each of the "
                                                         "12 short runs would outweigh their training)")
    parser.add_argument("--worker", nargs=3, type=int, metavar=("K", "SEED", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(*args.worker, engine=args.engine)), flush=True)
        return 0
    ks = [int(k) for k in args.ks.split(",")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = []
    for seed in range(args.seeds):  # a round: every k once, the order rotated each round
        for k in ks[seed % len(ks):] + ks[:seed % len(ks)]:
            print(f"seed {seed}, steps_per_generation {k} ...", flush=True)
            done = subprocess.run([sys.executable, __file__, "--worker", str(k), str(seed), str(args.steps),
                                   "--engine", args.engine],
                                  capture_output=True, text=True, env=env, timeout=3600)
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(f"  {r['s_per_step']:.2f} s/step, on-policy KL {r['on_policy_kl']}, ROUGE-L {r['rouge_l_after']:.3f}",
                  flush=True)
    report = {"settings": {"steps": args.steps, "batch_size": 4, "max_new_tokens": 48, "threads": 1,
                           "model": "embedded (fp32)", "preset": "default", "engine": args.engine, "eval_every": EVAL_EVERY,
                           "eval_prompts": EVAL_PROMPTS},
              "date": time.strftime("%Y-%m-%d"), "load_average": os.getloadavg(), "summary": summarize(runs),
              "runs": runs}
    Path(args.out).write_text(json.dumps(report, indent=1))
    for k, row in report["summary"].items():
        print(f"k={k}: {row['s_per_step']['median']:.2f} s/step ({row['s_per_step']['min']:.2f}-"
              f"{row['s_per_step']['max']:.2f}), x{row['speedup_vs_1']:.2f} vs k=1; on-policy KL "
              f"{ {s: round(v, 4) for s, v in row['on_policy_kl'].items()} }; ROUGE-L {row['rouge_l_after']['mean']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
