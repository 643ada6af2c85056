"""Seconds per optimizer step of SDFT, SFT and TRL's SDFTTrainer, interleaved in rounds, beside a lower bound.

    python benchmarks/step_time.py                          # every method whose packages are installed: 6 rounds
    python benchmarks/step_time.py --methods sdft,sft --rounds 10
    python benchmarks/step_time.py --methods sdft,sdft-hf,sdft-vllm,sft,trl
    python benchmarks/step_time.py --baseline ../old-checkout   # also time that checkout's sdft and sft

Every method runs in its own long-lived worker process (so its peak RSS is its own), which
loads the model, warms up, then waits. The driver asks the workers for one optimizer step
each, in turn, round after round (sdft, sft, trl, sdft, sft, trl, ...; the order rotates each
round), so a change of machine load mid-run hits every method alike; only one worker computes
at a time. Reported per method: the median seconds per step with its spread (min-max over
rounds), the median process CPU seconds per step (with one thread, the step's own cost even on a
busy machine; wall time counts the waits for a core too), median seconds per phase, rollout tokens per second, peak RSS; and for each pair of
methods the ratio of their step times within each round, as a median with its spread.

The lower bound of a step (`bound_s`, and `step_over_bound`: the step as a multiple of it,
the per-round median): the student and teacher passes as measured (each SDFT method's own;
TRL, which does not report phases, gets the fastest SDFT method's) plus a rollout at the
memory-bandwidth limit: decode passes (the rollout's longest completion: every pass reads
the weights once) x the bytes of the weights it decodes with (the student's, or vLLM's copy
in its dtype) / the single-thread memory rate, measured by the driver in every round (a
256 MiB copy, read + write bytes, and a read-only sum; the faster). SFT's bound is its
student pass alone.

Methods: sdft (the default engine, `engine: auto`), sdft-hf (transformers' generate),
sdft-vllm and sdft-vllm-compiled (the vllm engine, eager or compiled; `make install-vllm`),
sdft-vllm-fp32 (the vllm engine in float32 whatever the CPU), sft, trl
(TRL's experimental SDFTTrainer, `pip install 'sdft-kit[bench]'`) and trl-vllm (the same with
`use_vllm=True`, colocated), all on the same model, data, LoRA, batch, new tokens, teacher
kind, loss (forward KL on the top-k with a tail bucket, 3 tokens skipped), template and
thread count. For the vllm engine the worker also reports its start-up time, the resident
memory it added (vLLM's weights, KV cache and buffers, `import vllm` included) and the
seconds of each weight sync (part of the rollout phase).

A worker that does not answer within --start-timeout (loading) or --step-timeout (a step)
seconds is reported, stopped and dropped; the rounds go on without it. Progress lines are
flushed as they happen. Writes JSON (default benchmarks/results/step_time.json) and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "step_time.json"
# sdft-kit's SDFT methods and the rollout settings each uses ("sdft": the default engine)
ROLLOUTS = {"sdft": {}, "sdft-hf": {"engine": "hf"}, "sdft-vllm": {"engine": "vllm"},
            "sdft-vllm-compiled": {"engine": "vllm", "vllm_compile": True},
            "sdft-vllm-fp32": {"engine": "vllm", "vllm_dtype": "float32"},
            # rollouts reused: one engine call samples 4 steps' completions; a measured "step" is the mean
            # over those 4 (one with the rollout, three without), so the rounds compare whole generations
            "sdft-reuse4": {"steps_per_generation": 4}}
METHODS = [*ROLLOUTS, "sft", "trl", "trl-vllm", "trl-reuse4"]
DEFAULT_METHODS = "sdft,sdft-hf,sdft-vllm,sdft-vllm-compiled,sft,trl,trl-vllm"
NEEDS = {"sdft-vllm": ["vllm"], "sdft-vllm-compiled": ["vllm"], "sdft-vllm-fp32": ["vllm"], "trl": ["trl"],
         "trl-reuse4": ["trl"],
         "trl-vllm": ["trl", "vllm"]}
INSTALL = {"vllm": "make install-vllm", "trl": "pip install 'sdft-kit[bench]'"}


def say(text: str) -> None:
    print(text, flush=True)  # progress shows as it happens, also when stdout is a file


# -- the worker side: one process per method, one step per request --------------------------------
def decode_bytes(model, dtype_bytes: int | None = None) -> int:
    """Bytes of weights one decode pass reads: every base weight (LoRA merged), the input embedding only where
    it is the tied LM head (a lookup reads a few rows). `dtype_bytes`: in another copy's dtype (vLLM's)."""
    base = model.get_base_model()
    embedding = base.get_input_embeddings().weight
    tied = base.get_output_embeddings() is not None and base.get_output_embeddings().weight is embedding
    total = 0
    for name, p in base.named_parameters():  # shared (tied) tensors are listed once
        if ".lora_" in name or (p is embedding and not tied):
            continue
        total += p.numel() * (dtype_bytes or p.element_size())
    return total


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
        # set, not left to the defaults (which are now the measured preset's): the same settings as TRL's worker,
        # and as a --baseline checkout from before the presets
        template="paper", skip_first=3,
    )
    trainer = Trainer(Config().replace(**overrides), load_examples(SAMPLE_DATA))
    engine = trainer.engine
    passes = []
    if engine is not None:  # the rollout's decode passes: its longest completion
        sample = engine.sample

        def counted(*a, **k):
            batch = sample(*a, **k)
            passes.append(batch.completion_ids.shape[1])
            return batch

        engine.sample = counted
    vllm = type(engine).__name__ == "VLLMEngine"  # (by class name: a --baseline checkout's engines have no `name`)
    weight_bytes = decode_bytes(trainer.model, getattr(torch, engine.dtype).itemsize if vllm else None)
    group = overrides.get("steps_per_generation", 1)  # steps per engine call: measured together, as one mean
    for _ in range(args.warmup * group):
        trainer.train_step()
    yield None  # ready
    while True:
        cpu = time.process_time()
        records = [trainer.train_step() for _ in range(group)]
        record = {**records[-1], "tokens": sum(r["tokens"] for r in records) / group,
                  "seconds": {k: sum(r["seconds"][k] for r in records) / group for k in records[0]["seconds"]}}
        rollout_s = record["seconds"]["rollout"]
        yield {"s": record["seconds"]["total"], "cpu_s": (time.process_time() - cpu) / group,
               "phases": record["seconds"], "tokens": record["tokens"], "steps_per_generation": group,
               "rollout_tok_s": record["tokens"] / rollout_s if rollout_s else None,
               "is_weight": record.get("is_weight"), "peak_rss_mb": record["peak_mem_mb"],
               "threads": torch.get_num_threads(), "rollout_engine": record.get("engine", engine and "hf"),
               # a reused rollout's decode passes are shared by its `group` steps
               "decode_passes": passes[-1] / group if engine is not None else 0, "decode_bytes": weight_bytes,
               "engine": vllm and {"start_s": engine.start_seconds, "memory_mb": engine.memory_mb,
                                   "sync_s": engine.sync_seconds, "dtype": engine.dtype}}


def trl_steps(args: argparse.Namespace, use_vllm: bool = False, group: int = 1):
    """TRL's SDFTTrainer, paused between steps: its callback waits for the driver's next request.

    With `group` > 1, TRL's own `steps_per_generation` (one generation for that many steps, its
    `distillation_is_clip` 2 correcting the reused ones) and each measured step is the mean of a group.

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
        distillation_topk=args.topk, distillation_add_tail=True,
        distillation_is_clip=2.0 if group > 1 else None,  # TRL's correction of reused rollouts; off without reuse
        num_loss_tokens_to_skip=3,
        teacher_prompt_template=PAPER_TEMPLATE.replace("{demonstration}", "{privileged_context}"),
        bf16=False, gradient_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=1, seed=0, disable_tqdm=True, model_init_kwargs={"dtype": getattr(torch, args.dtype)}, **vllm,
        **(dict(steps_per_generation=group) if group > 1 else {}),
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    start = time.perf_counter()
    trainer = SDFTTrainer(model=model_path(args.model), args=config, train_dataset=data, peft_config=lora,
                          callbacks=[Paced()])
    start_s = time.perf_counter() - start
    threading.Thread(target=trainer.train, daemon=True).start()
    for _ in range(args.warmup * group):
        go.put(None)
        done.get()
    yield None
    while True:
        timed = []
        for _ in range(group):
            go.put(None)
            timed.append(done.get())
        seconds, cpu_seconds = (sum(t[i] for t in timed) / group for i in (0, 1))
        yield {"s": seconds, "cpu_s": cpu_seconds, "steps_per_generation": group, "phases": None, "tokens": None, "rollout_tok_s": None, "is_weight": None,
               "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(), "rollout_engine": None,
               "decode_passes": None, "decode_bytes": None,
               "engine": {"start_s": start_s, "memory_mb": None, "sync_s": None, "dtype": None} if use_vllm else None,
               "trl_version": __import__("trl").__version__}


def serve(method: str, args: argparse.Namespace) -> None:
    """Worker main loop: load and warm up, say 'ready', then one step per line read from stdin."""
    out = os.fdopen(os.dup(1), "w")  # the protocol's own channel: libraries' prints go to stderr
    os.dup2(2, 1)
    steps = (trl_steps(args, use_vllm=method == "trl-vllm", group=4 if method == "trl-reuse4" else 1)
             if method.startswith("trl") else sdft_kit_steps(method, args))
    next(steps)
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        if line.strip() != "step":
            break
        out.write(json.dumps(next(steps)) + "\n")
        out.flush()


# -- the driver ------------------------------------------------------------------------------------
class WorkerStalled(Exception):
    """A worker did not answer in time, or died."""


class Worker:
    def __init__(self, name: str, method: str, argv: list[str], logs: Path, code: str | None = None):
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
        env.pop("SDFT_KIT_AUTO_ENGINE", None)  # 'sdft' measures the default engine as a user gets it
        if method == "trl-vllm":  # TRL's engine: in this process, with a KV cache of 1 GiB (vLLM's smallest setting)
            env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1")
        if code:  # another checkout of sdft-kit, ahead of the installed one
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(code).resolve()), env.get("PYTHONPATH")]))
        self.name = name
        self.log = open(logs / f".worker-{name.replace(' ', '-')}.log", "w")
        # its own process group: stopping a stalled worker stops what it started too (vLLM, TRL's threads)
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", method, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
                                     start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # end of output: the worker exited

    def answer(self, timeout: float, what: str) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerStalled(f"worker {self.name} gave no answer within {timeout:.0f} s ({what}); "
                                f"see {self.log.name}") from None
        if not line:
            raise WorkerStalled(f"worker {self.name} exited ({what}); see {self.log.name}")
        return line

    def wait_ready(self, timeout: float) -> None:
        line = self.answer(timeout, "loading")
        if line.strip() != "ready":
            raise WorkerStalled(f"worker {self.name} failed to start; see {self.log.name}")

    def step(self, timeout: float) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return json.loads(self.answer(timeout, "a step"))

    def stop(self) -> None:
        """End the worker and everything it started, at once."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.stop()


def memory_rate() -> dict:
    """Single-thread memory rates in bytes/s: a 256 MiB copy (bytes read + written) and a read-only sum; the best
    of 5 each. `bytes_per_s` is the faster, what a decode pass reading the weights could reach at most."""
    import torch

    torch.set_num_threads(1)
    source = torch.ones(64 * 2**20)
    target = torch.empty_like(source)
    size = source.numel() * source.element_size()
    rates = {}
    for kind, run, moved in (("copy", lambda: target.copy_(source), 2 * size), ("read", lambda: source.sum(), size)):
        best = min(_timed(run) for _ in range(5))
        rates[kind] = moved / best
    return {**rates, "bytes_per_s": max(rates.values())}


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def step_bound(step: dict, rate: float, passes: float | None = None, weight_bytes: float | None = None,
               passes_s: float | None = None) -> float:
    """A step's lower bound in seconds: its student and teacher passes as measured (or `passes_s`) plus a rollout
    at the memory-rate limit (decode passes x weight bytes / rate)."""
    phases = step["phases"]
    measured = phases["student"] + phases["teacher"] if phases else passes_s
    passes = step["decode_passes"] if step["decode_passes"] is not None else passes
    weight_bytes = step["decode_bytes"] if step["decode_bytes"] is not None else weight_bytes
    return measured + passes * weight_bytes / rate


def compared(a: str, b: str) -> bool:
    """Whether the table reports a's step time over b's: SDFT against SFT, TRL and the hf engine; TRL's two modes."""
    if b.endswith("(baseline)"):
        return a == b.removesuffix(" (baseline)")
    if a.startswith("sdft"):
        return b in ("sft", "trl", "trl-vllm", "trl-reuse4") or (b == "sdft-hf" and a != "sdft-hf")
    return (a, b) in (("trl-vllm", "trl"), ("trl-reuse4", "trl"), ("trl-reuse4", "sft"))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(steps: list[dict]) -> dict:
    phases = steps[0]["phases"]
    tok_s = [s["rollout_tok_s"] for s in steps if s["rollout_tok_s"]]
    weights = [s["is_weight"] for s in steps if s["is_weight"] is not None]
    bounds = [s for s in steps if s.get("bound_s")]
    engines = [s["engine"] for s in steps if s["engine"]]
    return {
        "s_per_step": spread([s["s"] for s in steps]),
        # process CPU time: what a step costs this process whatever else runs on the machine (1 thread)
        "cpu_s_per_step": spread([s["cpu_s"] for s in steps]),
        "phases_s": {k: statistics.median(s["phases"][k] for s in steps) for k in phases} if phases else None,
        "tokens_per_step": statistics.median(s["tokens"] for s in steps) if steps[0]["tokens"] else None,
        "rollout_tokens_per_s": spread(tok_s) if tok_s else None,
        "rollout_engine": steps[-1]["rollout_engine"],
        "decode_passes": statistics.median(s["decode_passes"] for s in steps) if steps[0]["decode_passes"] else None,
        "decode_bytes": steps[-1]["decode_bytes"],
        "bound_s": spread([s["bound_s"] for s in bounds]) if bounds else None,
        "step_over_bound": spread([s["step_over_bound"] for s in bounds]) if bounds else None,
        "is_weight_mean": statistics.mean(weights) if weights else None,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
        "engine": {**engines[-1], "sync_s": spread([e["sync_s"] for e in engines])
                   if engines[-1]["sync_s"] is not None else None} if engines else None,
        "torch_threads": steps[-1]["threads"],
        "rounds": len(steps),
        **({"trl_version": steps[-1]["trl_version"]} if "trl_version" in steps[-1] else {}),
    }


def print_table(args, results: dict, ratios: dict, rollout_speedups: dict, dropped: dict, report: dict) -> None:
    rate = report["memory_rate_bytes_per_s"]
    say(f"\n{args.model} ({args.dtype}), batch {args.batch_size}, {args.max_new_tokens} new tokens, LoRA r16, teacher "
        f"{args.teacher}, vocab {args.vocab}, {args.threads} thread(s), {args.rounds} interleaved rounds; memory rate "
        f"{rate['median'] / 1e9:.1f} GB/s ({rate['min'] / 1e9:.1f}-{rate['max'] / 1e9:.1f}), load average "
        f"{report['machine']['load_average'][0]:.1f} at the end")
    say(f"{'method':<20}{'engine':>7}{'s/step (min-max)':>22}{'CPU s':>8}{'rollout':>9}{'teacher':>9}{'student':>9}"
        f"{'tok/s':>7}{'bound':>7}{'x bound':>9}{'peak RSS':>11}{'engine':>10}{'start':>7}")
    for name, r in results.items():
        p, s, engine = r["phases_s"] or {}, r["s_per_step"], r["engine"] or {}
        cells = "".join(f"{p[k]:>9.2f}" if k in p else f"{'-':>9}" for k in ("rollout", "teacher", "student"))
        tok = f"{r['rollout_tokens_per_s']['median']:.0f}" if r["rollout_tokens_per_s"] else "-"
        span = f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"
        bound = f"{r['bound_s']['median']:.2f}" if r["bound_s"] else "-"
        over = f"{r['step_over_bound']['median']:.2f}x" if r["step_over_bound"] else "-"
        memory = f"{engine['memory_mb']:.0f} MB" if engine.get("memory_mb") is not None else "-"
        start = f"{engine['start_s']:.0f} s" if engine else "-"
        say(f"{name:<20}{r['rollout_engine'] or '-':>7}{span:>22}{r['cpu_s_per_step']['median']:>8.2f}{cells}{tok:>7}"
            f"{bound:>7}{over:>9}{r['peak_rss_mb']:>8.0f} MB{memory:>10}{start:>7}")
    for pair, r in {**ratios, **{f"rollout tok/s {k}": v for k, v in rollout_speedups.items()}}.items():
        say(f"{pair}: {r['median']:.2f}x per round (min {r['min']:.2f}, max {r['max']:.2f})")
    if "sft" in results:
        for name in (n for n in results if n.startswith("sdft")):
            say(f"peak RSS {name} / sft: {results[name]['peak_rss_mb'] / results['sft']['peak_rss_mb']:.2f}x")
    for name, why in dropped.items():
        say(f"NOT MEASURED: {name}: {why}")
    say(f"(written to {args.out}; wall {report['wall_s']:.0f} s)")


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
    parser.add_argument("--start-timeout", type=float, default=900,
                        help="seconds a worker may take to load and warm up before it is dropped")
    parser.add_argument("--step-timeout", type=float, default=300,
                        help="seconds a worker may take for one step before it is dropped")
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
            say(f"{method} is not measured: {', '.join(missing)} is not installed "
                f"({'; '.join(INSTALL[m] for m in missing)})")
            methods.remove(method)
    names = {m: (m, None) for m in methods}
    if args.baseline:
        names.update({f"{m} (baseline)": (m, args.baseline) for m in ("sdft", "sdft-hf", "sft") if m in methods})
    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workers, dropped = [], {}

    def drop(worker: Worker, error: WorkerStalled) -> None:
        say(f"dropped: {error}")
        dropped[worker.name] = str(error)
        worker.stop()
        if worker in workers:
            workers.remove(worker)

    for name, (method, code) in names.items():  # start one at a time: loading competes for the CPU
        worker = Worker(name, method, argv, args.out.parent, code)
        try:
            worker.wait_ready(args.start_timeout)
        except WorkerStalled as error:
            drop(worker, error)
            continue
        workers.append(worker)
        say(f"{name} ready ({time.perf_counter() - start:.0f} s)")
    steps: dict[str, list[dict]] = {w.name: [] for w in workers}
    rates = []
    try:
        for round_ in range(args.rounds):
            rates.append(memory_rate())  # between steps: nothing else of this run computes
            shift = round_ % max(len(workers), 1)
            for worker in workers[shift:] + workers[:shift]:
                try:
                    steps[worker.name].append({**worker.step(args.step_timeout), "round": round_})
                except WorkerStalled as error:
                    drop(worker, error)
            say(f"round {round_ + 1}/{args.rounds}: memory {rates[-1]['bytes_per_s'] / 1e9:.1f} GB/s, "
                + ", ".join(f"{n} {s[-1]['s']:.2f} s" for n, s in steps.items() if s and s[-1]["round"] == round_))
    finally:
        for worker in workers:
            worker.close()
    steps = {name: s for name, s in steps.items() if s}
    if not steps:
        raise SystemExit("no method was measured: " + "; ".join(dropped.values()))
    add_bounds(steps, rates)
    results = {name: summarise(s) for name, s in steps.items()}
    ratios, rollout_speedups = {}, {}
    for a in steps:
        for b in steps:
            if a != b and compared(a, b):
                pairs = paired(steps[a], steps[b])
                ratios[f"{a} / {b}"] = spread([x["s"] / y["s"] for x, y in pairs])
                ratios[f"{a} / {b} (CPU time)"] = spread([x["cpu_s"] / y["cpu_s"] for x, y in pairs])
        if a.startswith("sdft-") and "sdft-hf" in steps and a != "sdft-hf" or a == "sdft" and "sdft-hf" in steps:
            rollout_speedups[f"{a} / sdft-hf"] = spread([x["rollout_tok_s"] / y["rollout_tok_s"]
                                                         for x, y in paired(steps[a], steps["sdft-hf"])])
    report = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")} | {"lora_r": 16, "alpha": 0.0},
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "cores": os.cpu_count(), "load_average": os.getloadavg()},
        "memory_rate_bytes_per_s": spread([r["bytes_per_s"] for r in rates]), "memory_rates": rates,
        "methods": results, "ratios_per_round": ratios, "rollout_tok_s_ratios_per_round": rollout_speedups,
        "dropped": dropped, "steps": steps,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(args, results, ratios, rollout_speedups, dropped, report)


def paired(a: list[dict], b: list[dict]) -> list[tuple[dict, dict]]:
    """The steps of two methods taken in the same rounds."""
    by_round = {s["round"]: s for s in b}
    return [(s, by_round[s["round"]]) for s in a if s["round"] in by_round]


def add_bounds(steps: dict[str, list[dict]], rates: list[dict]) -> None:
    """Each step's lower bound (`bound_s`) from its own round's memory rate; methods that report no phases or
    decode passes (TRL) take the round's fastest sdft-kit SDFT passes and the fewest decode passes at the student's
    own weight bytes."""
    for round_, rate in enumerate(rates):
        sdft = [s for name, ss in steps.items() for s in ss if s["round"] == round_ and s["decode_passes"]
                and s.get("steps_per_generation", 1) == 1]  # TRL's bound: a rollout per step, as TRL samples
        for ss in steps.values():
            for s in ss:
                if s["round"] != round_:
                    continue
                if s["phases"] is None and not sdft:
                    s["bound_s"] = None
                    continue
                s["bound_s"] = step_bound(
                    s, rate["bytes_per_s"],
                    passes=min((x["decode_passes"] for x in sdft), default=0) / s.get("steps_per_generation", 1),
                    weight_bytes=max((x["decode_bytes"] for x in sdft), default=None),  # fp32: the student's
                    passes_s=min((x["phases"]["student"] + x["phases"]["teacher"] for x in sdft), default=None))
                s["step_over_bound"] = s["s"] / s["bound_s"]


if __name__ == "__main__":
    main()
