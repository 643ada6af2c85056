"""What the forgetting monitor costs: seconds per evaluation against seconds per training step.

    python benchmarks/monitor_cost.py --steps 2 --out benchmarks/results/monitor_cost.json

A seeded SDFT run of the embedded model on the bundled sample (the default settings: batch 4, 128 new
tokens, 1 thread) with --monitor-every 1, so steps and evaluations alternate (each evaluation sits
between two steps, under the same load). Each evaluation scores the default probe (the bundled
skills_probe, 31 items, by option log-likelihood) and the default holdout (8 records, greedy answers of
up to max_new_tokens, ROUGE-L F1); the probe's part is timed inside each evaluation, the rest is the
holdout's. Reports medians with min-max; the machine is shared, so read the ratio of evaluation to step,
whose two sides share the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2),
            "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/monitor_cost.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from sdft_kit import SAMPLE_DATA, Config, Trainer, load_examples, monitor
    from sdft_kit.driver import train
    from sdft_kit.evaluate import evaluate

    probe_s = []

    def timed_evaluate(*args, **kwargs):  # score() calls evaluate() for the probe (and an eval-items new task)
        start = time.perf_counter()
        result = evaluate(*args, **kwargs)
        probe_s.append(time.perf_counter() - start)
        return result

    monitor.evaluate = timed_evaluate
    load_start = os.getloadavg()
    config = Config().replace(steps=args.steps, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                              threads=1, report_to="none", monitor_every=1, seed=0)
    trainer = Trainer(config, load_examples(SAMPLE_DATA))
    records = train(trainer, progress=False, echo=True).records
    evaluations = [records[0]["monitor_start"]] + [r["monitor"] for r in records]
    step_s = [r["seconds"]["total"] for r in records]
    eval_s = [e["seconds"] for e in evaluations]
    holdout_s = [total - probe for total, probe in zip(eval_s, probe_s)]

    result = {
        "command": f"python benchmarks/monitor_cost.py --steps {args.steps} --max-new-tokens {args.max_new_tokens} "
                   f"--batch-size {args.batch_size}",
        "settings": {"model": "embedded (SmolLM2-135M-Instruct, fp32)", "threads": 1, "batch_size": args.batch_size,
                     "max_new_tokens": args.max_new_tokens, "probe_items": len(trainer.probes.prior),
                     "holdout_records": len(trainer.probes.holdout), "cpu_count": os.cpu_count(),
                     "load_average_start": [round(x, 1) for x in load_start],
                     "load_average_end": [round(x, 1) for x in os.getloadavg()]},
        "step_s": spread(step_s), "evaluation_s": spread(eval_s),
        "evaluation_per_step": round(statistics.median(eval_s) / statistics.median(step_s), 2),
        "probe_s": spread(probe_s), "holdout_s": spread(holdout_s),
        "evaluations": evaluations, "steps_raw_s": step_s,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("step_s", "evaluation_s", "evaluation_per_step", "probe_s", "holdout_s",
                                             "settings")}, indent=1))


if __name__ == "__main__":
    main()
