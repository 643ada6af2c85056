"""Which settings make `make demo` show the student moving towards the demonstrations? Measured, over seeds.

For each setting (teacher template, learning rate, steps, skip_first) and seed: SDFT on the 24
bundled demonstrations (the demo's batch 4, 48-token rollouts, base teacher), then the student's
greedy answers to the same 24 prompts, scored two ways (`sdft_kit.demo_metrics`):
    format      share of answers in the demonstrated form, "Answer: ..."
    similarity  mean ROUGE-L F1 to the demonstrations
before training (the base model, the same for every seed) and after. First, per template, the
teacher's probability of the demonstrations' first token ("Answer") at the start of an answer,
against the student's: SDFT can only pull the student towards what its teacher predicts.
Writes benchmarks/results/demo_settings.json.

    python benchmarks/demo_settings.py --settings system:1e-3:12:3,system:1e-3:12:0 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sdft_kit import SAMPLE_DATA, Config, Trainer, load_examples, load_model
from sdft_kit.batch import mean_logprobs
from sdft_kit.cli import demo_metrics
from sdft_kit.demos import student_prompt, teacher_prompt
from sdft_kit.models import add_lora, set_threads

OUT = Path(__file__).parent / "results" / "demo_settings.json"


def first_token_probability(model, tokenizer, examples, template: str | None) -> float:
    """Mean probability of "Answer" as the first answer token, after the student prompt (None) or a teacher prompt."""
    prompts = [student_prompt(tokenizer, ex) if template is None else teacher_prompt(tokenizer, ex, [ex.demonstration],
                                                                                     template) for ex in examples]
    # mean_logprobs of the one-token answer "Answer" (no EOS) is that token's log-prob
    return statistics.mean(torch.tensor(mean_logprobs(model, tokenizer, prompts, ["Answer"] * len(prompts),
                                                      with_eos=False)).exp().tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", required=True, help="comma-separated template:learning_rate:steps:skip_first")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    set_threads(args.threads)
    examples = load_examples(SAMPLE_DATA)
    assert all(ex.demonstration.startswith("Answer: ") for ex in examples)
    results = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {"runs": []}
    base, tokenizer = load_model("embedded")
    if "first_token" not in results:
        results["first_token"] = {name or "student": first_token_probability(base, tokenizer, examples, name)
                                  for name in (None, "paper", "plain", "system")}
        results["before"] = demo_metrics(base, tokenizer, examples)
        print("P('Answer' first):", {k: round(v, 4) for k, v in results["first_token"].items()})
        print("before:", results["before"]["summary"], flush=True)
    for setting in args.settings.split(","):
        template, lr, steps, skip = setting.split(":")
        for seed in range(args.seeds):
            key = {"template": template, "learning_rate": float(lr), "steps": int(steps), "skip_first": int(skip),
                   "seed": seed}
            if any(all(run[k] == v for k, v in key.items()) for run in results["runs"]):
                continue
            start = time.perf_counter()
            model, tokenizer = load_model("embedded")
            config = Config().replace(steps=int(steps), batch_size=4, max_new_tokens=48, learning_rate=float(lr),
                                      teacher="base", template=template, skip_first=int(skip), seed=seed,
                                      threads=args.threads, save_every=int(steps))
            model = add_lora(model, config.model, seed=seed)
            records = Trainer(config, examples, model=model, tokenizer=tokenizer).train(progress=False)
            after = demo_metrics(model, tokenizer, examples)
            results["runs"].append({**key, "format": after["format"], "similarity": after["similarity"],
                                    "answers": after["answers"], "final_kl": records[-1]["mean_kl"],
                                    "seconds": round(time.perf_counter() - start, 1)})
            print(f"{setting} seed {seed}: {after['summary']} ({time.perf_counter() - start:.0f} s)", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
