"""Seconds per optimizer step of SDFT, SFT and TRL's SDFTTrainer, interleaved in rounds.

    python benchmarks/step_time.py                          # every method whose packages are installed: 6 rounds
    python benchmarks/step_time.py --methods sdft,sft --rounds 10
    python benchmarks/step_time.py --methods sdft,sdft-vllm,sft
    python benchmarks/step_time.py --baseline ../old-checkout   # also time that checkout's sdft and sft

Every method runs in its own long-lived worker process (so its peak RSS is its own), which
loads the model, warms up, then waits. The driver asks the workers for one optimizer step
each, in turn, round after round (sdft, sft, trl, sdft, sft, trl, ...; the order rotates each
round), so a change of machine load mid-run hits every method alike; only one worker computes
at a time. Reported per method: the median seconds per step with its spread (min-max over
rounds), the median process CPU seconds per step (with one thread, the step's own cost even on a
busy machine; wall time counts the waits for a core too), median seconds per phase, rollout tokens per second, peak RSS; and for each pair of
methods the ratio of their step times within each round, as a median with its spread.

Methods: sdft (rollouts by transformers' generate), sdft-vllm and sdft-vllm-compiled (the
vllm engine, eager or compiled; `make install-vllm`), sft, trl
(TRL's experimental SDFTTrainer, `pip install 'sdft-kit[bench]'`) and trl-vllm (the same with
`use_vllm=True`, colocated), all on the same model, data, LoRA, batch, new tokens, teacher
kind, loss (forward KL on the top-k with a tail bucket, 3 tokens skipped), template and
thread count. For the vllm engine the worker also reports its start-up time, the resident
memory it added (vLLM's weights, KV cache and buffers, `import vllm` included) and the
seconds of each weight sync (part of the rollout phase). Writes JSON (default
benchmarks/results/step_time.json) and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "step_time.json"
# sdft-kit's SDFT methods and the rollout settings each uses
ROLLOUTS = {"sdft": {}, "sdft-vllm": {"engine": "vllm"}, "sdft-vllm-compiled": {"engine": "vllm", "vllm_compile": True}}
METHODS = [*ROLLOUTS, "sft", "trl", "trl-vllm"]
DEFAULT_METHODS = "sdft,sdft-vllm,sdft-vllm-compiled,sft,trl,trl-vllm"
NEEDS = {"sdft-vllm": ["vllm"], "sdft-vllm-compiled": ["vllm"], "trl": ["trl"], "trl-vllm": ["trl", "vllm"]}
INSTALL = {"vllm": "make install-vllm", "trl": "pip install 'sdft-kit[bench]'"}


# -- the worker side: one process per method, one step per request --------------------------------
def sdft_kit_steps(method: str, args: argparse.Namespace):
    """Yields one step's figures per `next()`, after loading and warm-up."""
    import torch

    from sdft_kit import SAMPLE_DATA, Config, Trainer, load_examples

    torch.set_num_threads(args.threads)
    kind = "sft" if method == "sft" else "sdft"
    overrides = dict(
        model=args.model, method=kind, steps=10_000, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        lora_r=16, teacher=args.teacher, vocab=args.vocab, topk=args.topk, alpha=0.0, threads=args.threads,
        learning_rate=5e-4, seed=0, chunk_size=args.chunk_size, dtype=args.dtype, **ROLLOUTS.get(method, {}),
    )
    trainer = Trainer(Config().replace(**overrides), load_examples(SAMPLE_DATA))
    engine = trainer.engine if overrides.get("engine") == "vllm" else None
    for _ in range(args.warmup):
        trainer.train_step()
    yield None  # ready
    while True:
        cpu = time.process_time()
        record = trainer.train_step()
        rollout_s = record["seconds"]["rollout"]
        yield {"s": record["seconds"]["total"], "cpu_s": time.process_time() - cpu, "phases": record["seconds"],
               "tokens": record["tokens"],
               "rollout_tok_s": record["tokens"] / rollout_s if rollout_s else None,
               "is_weight": record.get("is_weight"), "peak_rss_mb": record["peak_mem_mb"],
               "threads": torch.get_num_threads(),
               "engine": engine and {"start_s": engine.start_seconds, "memory_mb": engine.memory_mb,
                                     "sync_s": engine.sync_seconds, "dtype": engine.dtype}}


def trl_steps(args: argparse.Namespace, use_vllm: bool = False):
    """TRL's SDFTTrainer, paused between steps: its callback waits for the driver's next request.

    With `use_vllm`, TRL's colocated vLLM engine samples the rollouts with its own defaults
    (compiled; dtype 'auto', which is bf16 on CPUs; KV cache from VLLM_CPU_KVCACHE_SPACE).
    """
    import queue
    import tempfile
    import threading

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from sdft_kit import PAPER_TEMPLATE, SAMPLE_DATA, load_examples
    from sdft_kit.models import model_path, peak_rss_mb

    torch.set_num_threads(args.threads)
    examples = load_examples(SAMPLE_DATA)
    data = Dataset.from_list([{"prompt": list(ex.messages), "privileged_context": ex.demonstration} for ex in examples])
    go, done = queue.Queue(), queue.Queue()

    class Paced(TrainerCallback):
        def on_step_begin(self, *_, **__):
            go.get()
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__):
            done.put((time.perf_counter() - self.start, time.process_time() - self.cpu))

    out = tempfile.mkdtemp(prefix="sdft-kit-bench-")
    vllm = dict(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=2048) if use_vllm else {}
    config = SDFTConfig(
        output_dir=out, max_steps=10_000, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, num_generations=1, max_completion_length=args.max_new_tokens,
        learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=0.1, max_grad_norm=1.0,
        weight_decay=0.0, temperature=1.0, top_p=1.0, teacher_model_kind=args.teacher,
        distillation_alpha=0.0, distillation_mode="topk_logits" if args.vocab == "topk" else "full_logits",
        distillation_topk=args.topk, distillation_add_tail=True, distillation_is_clip=None,
        num_loss_tokens_to_skip=3,
        teacher_prompt_template=PAPER_TEMPLATE.replace("{demonstration}", "{privileged_context}"),
        bf16=False, gradient_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=1, seed=0, disable_tqdm=True, model_init_kwargs={"dtype": getattr(torch, args.dtype)}, **vllm,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    start = time.perf_counter()
    trainer = SDFTTrainer(model=model_path(args.model), args=config, train_dataset=data, peft_config=lora,
                          callbacks=[Paced()])
    start_s = time.perf_counter() - start
    threading.Thread(target=trainer.train, daemon=True).start()
    for _ in range(args.warmup):
        go.put(None)
        done.get()
    yield None
    while True:
        go.put(None)
        seconds, cpu_seconds = done.get()
        yield {"s": seconds, "cpu_s": cpu_seconds, "phases": None, "tokens": None, "rollout_tok_s": None, "is_weight": None,
               "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(),
               "engine": {"start_s": start_s, "memory_mb": None, "sync_s": None, "dtype": None} if use_vllm else None,
               "trl_version": __import__("trl").__version__}


def serve(method: str, args: argparse.Namespace) -> None:
    """Worker main loop: load and warm up, say 'ready', then one step per line read from stdin."""
    out = os.fdopen(os.dup(1), "w")  # the protocol's own channel: libraries' prints go to stderr
    os.dup2(2, 1)
    steps = trl_steps(args, use_vllm=method == "trl-vllm") if method.startswith("trl") else sdft_kit_steps(method, args)
    next(steps)
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        if line.strip() != "step":
            break
        out.write(json.dumps(next(steps)) + "\n")
        out.flush()


# -- the driver ------------------------------------------------------------------------------------
class Worker:
    def __init__(self, name: str, method: str, argv: list[str], logs: Path, code: str | None = None):
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        if method == "trl-vllm":  # TRL's engine: in this process, with a KV cache of 1 GiB (vLLM's smallest setting)
            env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1")
        if code:  # another checkout of sdft-kit, ahead of the installed one
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(code).resolve()), env.get("PYTHONPATH")]))
        self.name = name
        self.log = open(logs / f".worker-{name.replace(' ', '-')}.log", "w")
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", method, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"worker {self.name} failed to start; see {self.log.name}")

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.name} died; see {self.log.name}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def compared(a: str, b: str) -> bool:
    """Whether the table reports a's step time over b's: SDFT against SFT, TRL and the hf engine; TRL's two modes."""
    if b.endswith("(baseline)"):
        return a == b.removesuffix(" (baseline)")
    if a.startswith("sdft"):
        return b in ("sft", "trl", "trl-vllm") or (b == "sdft" and a != "sdft")
    return (a, b) == ("trl-vllm", "trl")


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(steps: list[dict]) -> dict:
    phases = steps[0]["phases"]
    tok_s = [s["rollout_tok_s"] for s in steps if s["rollout_tok_s"]]
    weights = [s["is_weight"] for s in steps if s["is_weight"] is not None]
    return {
        "s_per_step": spread([s["s"] for s in steps]),
        # process CPU time: what a step costs this process whatever else runs on the machine (1 thread)
        "cpu_s_per_step": spread([s["cpu_s"] for s in steps]),
        "phases_s": {k: statistics.median(s["phases"][k] for s in steps) for k in phases} if phases else None,
        "tokens_per_step": statistics.median(s["tokens"] for s in steps) if steps[0]["tokens"] else None,
        "rollout_tokens_per_s": spread(tok_s) if tok_s else None,
        "is_weight_mean": statistics.mean(weights) if weights else None,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
        "engine": steps[-1]["engine"] and {**steps[-1]["engine"], "sync_s": spread([s["engine"]["sync_s"] for s in steps])
                                           if steps[-1]["engine"]["sync_s"] is not None else None},
        "torch_threads": steps[-1]["threads"],
        **({"trl_version": steps[-1]["trl_version"]} if "trl_version" in steps[-1] else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker, pinned and reported")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--teacher", default="base")
    parser.add_argument("--vocab", default="topk")
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=1, help="sdft-kit rows per teacher/student pass (0 = all)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="base weights' dtype, for every method (LoRA stays float32)")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated, from {', '.join(METHODS)}; those whose packages are missing are left out")
    parser.add_argument("--baseline", help="another sdft-kit checkout: its sdft and sft run as extra workers")
    parser.add_argument("--warmup", type=int, default=1, help="steps each worker runs before the rounds")
    parser.add_argument("--rounds", type=int, default=6, help="measured steps per method")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args.worker, args)
        return

    argv = [a for a in sys.argv[1:] if not a.startswith("--baseline") and a != args.baseline]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    for method in list(methods):
        missing = [package for package in NEEDS.get(method, []) if importlib.util.find_spec(package) is None]
        if missing:
            print(f"{method} is not measured: {', '.join(missing)} is not installed "
                  f"({'; '.join(INSTALL[m] for m in missing)})")
            methods.remove(method)
    names = {m: (m, None) for m in methods}
    if args.baseline:
        names.update({f"{m} (baseline)": (m, args.baseline) for m in ("sdft", "sft") if m in methods})
    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workers = []
    for name, (method, code) in names.items():  # start one at a time: loading competes for the CPU
        workers.append(Worker(name, method, argv, args.out.parent, code))
        workers[-1].wait_ready()
    steps: dict[str, list[dict]] = {w.name: [] for w in workers}
    try:
        for round_ in range(args.rounds):
            shift = round_ % len(workers)
            for worker in workers[shift:] + workers[:shift]:
                steps[worker.name].append(worker.step())
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n} {s[-1]['s']:.2f} s" for n, s in steps.items()),
                  flush=True)
    finally:
        for worker in workers:
            worker.close()
    results = {name: summarise(s) for name, s in steps.items()}
    ratios, rollout_speedups = {}, {}
    for a in steps:
        for b in steps:
            if a != b and compared(a, b):
                ratios[f"{a} / {b}"] = spread([x["s"] / y["s"] for x, y in zip(steps[a], steps[b])])
                ratios[f"{a} / {b} (CPU time)"] = spread([x["cpu_s"] / y["cpu_s"] for x, y in zip(steps[a], steps[b])])
        if a.startswith("sdft-") and "sdft" in steps:
            rollout_speedups[f"{a} / sdft"] = spread([x["rollout_tok_s"] / y["rollout_tok_s"]
                                                      for x, y in zip(steps[a], steps["sdft"])])
    report = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")} | {"lora_r": 16, "alpha": 0.0},
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "cores": os.cpu_count()},
        "methods": results, "ratios_per_round": ratios, "rollout_tok_s_ratios_per_round": rollout_speedups,
        "steps": steps,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    print(f"\n{args.model} ({args.dtype}), batch {args.batch_size}, {args.max_new_tokens} new tokens, LoRA r16, teacher "
          f"{args.teacher}, vocab {args.vocab}, {args.threads} thread(s), {args.rounds} interleaved rounds")
    print(f"{'method':<20}{'s/step (min-max)':>22}{'CPU s':>8}{'rollout':>9}{'teacher':>9}{'student':>9}{'tok/s':>8}"
          f"{'peak RSS':>11}{'engine':>10}{'start':>8}")
    for name, r in results.items():
        p, s, engine = r["phases_s"] or {}, r["s_per_step"], r["engine"] or {}
        cells = "".join(f"{p[k]:>9.2f}" if k in p else f"{'-':>9}" for k in ("rollout", "teacher", "student"))
        tok = f"{r['rollout_tokens_per_s']['median']:.0f}" if r["rollout_tokens_per_s"] else "-"
        span = f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"
        memory = f"{engine['memory_mb']:.0f} MB" if engine.get("memory_mb") is not None else "-"
        start = f"{engine['start_s']:.0f} s" if engine else "-"
        print(f"{name:<20}{span:>22}{r['cpu_s_per_step']['median']:>8.2f}{cells}{tok:>8}{r['peak_rss_mb']:>8.0f} MB"
              f"{memory:>10}{start:>8}")
    for pair, r in {**ratios, **{f"rollout tok/s {k}": v for k, v in rollout_speedups.items()}}.items():
        print(f"{pair}: {r['median']:.2f}x per round (min {r['min']:.2f}, max {r['max']:.2f})")
    if "sft" in results:
        for name in (n for n in results if n.startswith("sdft")):
            print(f"peak RSS {name} / sft: {results[name]['peak_rss_mb'] / results['sft']['peak_rss_mb']:.2f}x")
    print(f"(written to {args.out}; wall {report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
