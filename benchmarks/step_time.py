"""Seconds per optimizer step of SDFT vs SFT, on identical settings, one process each.

    python benchmarks/step_time.py                      # embedded model, CPU, 1 thread
    python benchmarks/step_time.py --threads 2 --steps 8
    python benchmarks/step_time.py --rollout-weights int8   # sample from a per-rollout int8 copy

Each method runs in its own process so its peak RSS is its own. With the `bench`
extra (trl) installed, TRL's experimental SDFTTrainer is measured too, on the same
model, data, LoRA, batch, new tokens, teacher kind, loss (forward KL on the top-k
with a tail bucket, 3 tokens skipped), template and thread count. Reported: median
seconds per optimizer step after warm-up, median seconds per phase, rollout tokens
per second and peak memory. Writes JSON (default benchmarks/results/step_time.json)
and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
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
        "alpha": 0.0, "threads": args.threads, "chunk_size": args.chunk_size, "dtype": args.dtype,
        "rollout_weights": args.rollout_weights, "release_memory": args.release_memory,
        "warmup_steps": args.warmup, "measured_steps": args.steps,
    }


def worker(method: str, args: argparse.Namespace) -> dict:
    """Run in a child process: train `warmup + steps` steps and summarise."""
    import torch

    from sdft_kit import Config, Trainer, load_examples
    from sdft_kit import SAMPLE_DATA

    torch.set_num_threads(args.threads)
    config = Config().replace(
        model=args.model, method=method, steps=args.warmup + args.steps, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, lora_r=16, teacher=args.teacher, vocab=args.vocab, topk=args.topk,
        alpha=0.0, threads=args.threads, learning_rate=5e-4, seed=0, chunk_size=args.chunk_size, dtype=args.dtype,
        weights=args.rollout_weights, release_memory=args.release_memory,
    )
    trainer = Trainer(config, load_examples(SAMPLE_DATA))
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
        "is_weight_mean": (statistics.mean(r["is_weight"] for r in records)
                           if records[0].get("is_weight") is not None else None),
    }


def trl_worker(args: argparse.Namespace) -> dict:
    """TRL's experimental SDFTTrainer on the settings sdft-kit runs with (needs `pip install trl`)."""
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from sdft_kit import PAPER_TEMPLATE, load_examples
    from sdft_kit import SAMPLE_DATA
    from sdft_kit.models import embedded_model_dir
    from sdft_kit.trainer import peak_memory_mb

    torch.set_num_threads(args.threads)
    examples = load_examples(SAMPLE_DATA)
    data = Dataset.from_list([{"prompt": list(ex.messages), "privileged_context": ex.demonstration} for ex in examples])
    model = str(embedded_model_dir()) if args.model == "embedded" else args.model

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], None

        def on_step_begin(self, *_, **__):
            self.last = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.last)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        config = SDFTConfig(
            output_dir=out, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1, num_generations=1, max_completion_length=args.max_new_tokens,
            learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=0.1, max_grad_norm=1.0, weight_decay=0.0,
            temperature=1.0, top_p=1.0, teacher_model_kind=args.teacher, distillation_alpha=0.0,
            distillation_mode="topk_logits" if args.vocab == "topk" else "full_logits",
            distillation_topk=args.topk, distillation_add_tail=True, distillation_is_clip=None,
            num_loss_tokens_to_skip=3,
            teacher_prompt_template=PAPER_TEMPLATE.replace("{demonstration}", "{privileged_context}"),
            bf16=False, gradient_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no",
            logging_steps=1, seed=0, disable_tqdm=True, model_init_kwargs={"dtype": getattr(torch, args.dtype)},
        )
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SDFTTrainer(model=model, args=config, train_dataset=data, peft_config=lora, callbacks=[timer])
        trainer.train()
    measured = timer.times[args.warmup:]
    return {"s_per_step": statistics.median(measured), "phases_s": None, "tokens_per_step": None,
            "rollout_tokens_per_s": None, "peak_rss_mb": round(peak_memory_mb(torch.device("cpu")), 1),
            "torch_threads": torch.get_num_threads(), "trl_version": __import__("trl").__version__}


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
    parser.add_argument("--chunk-size", type=int, default=1, help="sdft-kit rows per teacher/student pass (0 = all)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="base weights' dtype, for every method (LoRA stays float32)")
    parser.add_argument("--rollout-weights", default="exact", choices=("exact", "int8"),
                        help="sdft-kit SDFT's rollout weights (int8: sampled from an int8 copy, importance-weighted)")
    parser.add_argument("--release-memory", default=True, action=argparse.BooleanOptionalAction,
                        help="sdft-kit's train.release_memory (glibc gives freed memory back at once)")
    parser.add_argument("--methods", default="sdft,sft,trl_sdft",
                        help="comma-separated subset of sdft, sft, trl_sdft (trl_sdft needs trl)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="measured steps after warm-up")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(trl_worker(args) if args.worker == "trl_sdft" else worker(args.worker, args)))
        return

    argv = [a for a in sys.argv[1:]]
    start = time.perf_counter()
    methods = [m for m in ("sdft", "sft") if m in args.methods.split(",")]
    if "trl_sdft" in args.methods.split(","):
        if importlib.util.find_spec("trl") is not None:
            methods.append("trl_sdft")
        else:
            print("trl is not installed (pip install 'sdft-kit[bench]'): TRL's SDFTTrainer is not measured")
    results = {m: run_child(m, argv) for m in methods}
    sdft, sft, trl = results.get("sdft"), results.get("sft"), results.get("trl_sdft")
    report = {
        "settings": settings(args),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "threads": args.threads,
        "sdft_s_per_step": sdft["s_per_step"] if sdft else None,
        "sft_s_per_step": sft["s_per_step"] if sft else None,
        "trl_sdft_s_per_step": trl["s_per_step"] if trl else None,
        "ratio_sdft_sft": sdft["s_per_step"] / sft["s_per_step"] if sdft and sft else None,
        "ratio_sdft_trl": sdft["s_per_step"] / trl["s_per_step"] if sdft and trl else None,
        "peak_rss_mb": {m: r["peak_rss_mb"] for m, r in results.items()},
        "methods": results,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"embedded model ({args.dtype}, rollout weights {args.rollout_weights}), batch {args.batch_size}, {args.max_new_tokens} new tokens, LoRA r16, "
          f"teacher {args.teacher}, vocab {args.vocab}, {args.threads} thread(s)")
    print(f"{'method':<9}{'s/step':>8}{'rollout':>9}{'teacher':>9}{'student':>9}{'optim':>8}{'tok/s':>8}{'peak RSS':>11}")
    for name, r in results.items():
        p = r["phases_s"] or {}
        cells = "".join(f"{p[k]:>9.2f}" if k in p else f"{'-':>9}" for k in ("rollout", "teacher", "student"))
        optim = f"{p['optimizer']:>8.2f}" if p else f"{'-':>8}"
        tps = f"{r['rollout_tokens_per_s']:.0f}" if r["rollout_tokens_per_s"] else "-"
        print(f"{name:<9}{r['s_per_step']:>8.2f}{cells}{optim}{tps:>8}{r['peak_rss_mb']:>8.0f} MB")
    ratios = [f"{name} = {report[key]:.2f}x" for name, key in
              (("SDFT / SFT", "ratio_sdft_sft"), ("SDFT / TRL SDFT", "ratio_sdft_trl")) if report[key] is not None]
    if sdft and sft:
        ratios.append(f"peak RSS SDFT / SFT = {sdft['peak_rss_mb'] / sft['peak_rss_mb']:.2f}x")
    print(", ".join(ratios) + f"   (written to {args.out})")


if __name__ == "__main__":
    main()
