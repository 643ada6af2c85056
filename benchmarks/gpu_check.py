"""The GPU check: sdft-kit on CUDA, in one run of a few minutes (a lent machine: `make gpu-kit`, then its command).

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json        # on a CUDA machine (< 8 min on an H200)
    python benchmarks/gpu_check.py --cpu-smoke                     # the same code path, tiny shapes, on the CPU (CI)

Without CUDA it runs the smoke mode by itself. Sections, each reported (an error in one is
written down and the next one runs):

1. agreement: a tiny fixed-seed model with a perturbed LoRA, one fixed batch (the bundled
   demonstrations as completions, teacher prompts with the demonstration): the SDFT and SFT
   losses and the LoRA gradients computed on the CPU and on CUDA, in float32 (relative differences).
2. notebook 06's code path: the library calls the notebook makes (`Config` defaults on CUDA: 4-bit
   NF4 QLoRA, an EMA teacher; `Trainer` with a run directory, `quick_check`, the steps,
   `memory_report`, `load_records`, `chat`) on a random-weight Qwen3-4B read from disk.
3. shapes: random-weight models of real shapes (Qwen3-1.7B, Qwen3-4B, Llama-3.2-3B; see
   model_shapes.py) in bf16 and in 4-bit NF4, written to disk once and loaded like a Hub model,
   with ~1k-token teacher prompts and 256-token rollouts: sdft-kit's SDFT, its SFT and TRL's
   SDFTTrainer, each in its own process, interleaved in rounds (one step each, in turn): seconds
   per step, peak CUDA memory (allocated and reserved), and whether each fits a 15 GB cap (a Colab
   T4) and a 24 GB cap (a 4090): every process starts capped at 15 GB with torch's per-process
   memory fraction; a step that runs out of memory there is retried under 24 GB.

A time budget (--budget-s) bounds the run: shapes that could not start in time are reported as
not run. Progress lines are flushed as they happen; the JSON is written after every section.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from model_shapes import save_random_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"
CAPS_GB = (15, 24)
FULL = dict(shapes=["Qwen3-4B", "Llama-3.2-3B", "Qwen3-1.7B"], precisions=["nf4", "bf16"], teacher_tokens=1000,
            new_tokens=256, batch=4, warmup=1, rounds=2, notebook_shape="Qwen3-4B", notebook_steps=2)
SMOKE = dict(shapes=["tiny"], precisions=["bf16"], teacher_tokens=32, new_tokens=4, batch=2, warmup=0,
             rounds=1, notebook_shape="tiny", notebook_steps=1)
METHODS = ("sdft", "sft", "trl")


def say(text: str) -> None:
    print(text, flush=True)


def examples(teacher_tokens: int, count: int = 8):
    """Examples whose teacher prompt is about `teacher_tokens` long: the bundled queries with their
    demonstrations repeated to length (random weights: only the lengths matter)."""
    from sdft_kit import SAMPLE_DATA, load_examples

    base = load_examples(SAMPLE_DATA)[:count]
    # ~1.3 tokens per word in these demonstrations
    words = max(teacher_tokens * 3 // 4, 8)
    out = []
    for ex in base:
        text = (ex.demonstration + " ") * (words // max(len(ex.demonstration.split()), 1) + 1)
        out.append({"messages": [*ex.messages, {"role": "assistant", "content": " ".join(text.split()[:words])}]})
    return load_examples(out)


# -- 1. agreement ----------------------------------------------------------------------------------
def agreement(tokenizer_dir: str | None, device: str) -> dict:
    """SDFT and SFT losses and LoRA gradients on the CPU and on `device`, same weights and batch, float32."""
    import torch

    from model_shapes import random_model
    from sdft_kit import SAMPLE_DATA, Config, add_lora, load_examples
    from sdft_kit.batch import demonstration_batch
    from sdft_kit.demos import student_prompt, teacher_prompt
    from sdft_kit.models import lora_parameters
    from sdft_kit.teachers import make_teacher
    from sdft_kit.update import sdft_objective, sft_objective

    model, tokenizer = random_model("tiny", dtype=torch.float32, tokenizer_dir=tokenizer_dir, seed=0)
    config = Config().replace(vocab="topk", topk=20, teacher="base")
    model = add_lora(model, config.model, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.05)  # B starts at zero: move it so the gradients reach both factors
    data = load_examples(SAMPLE_DATA)[:4]
    figures = {}
    for where in ("cpu", device):
        copy_ = copy.deepcopy(model).to(where)
        batch = demonstration_batch(tokenizer, [student_prompt(tokenizer, ex) for ex in data],
                                    [ex.demonstration for ex in data], torch.device(where))
        batch = batch.with_teacher_prompts(tokenizer, [teacher_prompt(tokenizer, ex, [ex.demonstration]) for ex in data])
        teacher = make_teacher(copy_, config.teacher)
        out = {}
        for name, objective in (("sdft", sdft_objective), ("sft", sft_objective)):
            copy_.zero_grad(set_to_none=True)
            loss = objective(copy_, teacher, batch, config).student.loss
            loss.backward()
            out[name] = (float(loss), {n: p.grad.detach().cpu().clone() for n, p in lora_parameters(copy_).items()})
        figures[where] = out
    result = {"devices": ["cpu", device]}
    for name in ("sdft", "sft"):
        (loss_a, grads_a), (loss_b, grads_b) = figures["cpu"][name], figures[device][name]
        scale = max(float(g.abs().max()) for g in grads_a.values())
        result[name] = {"loss_cpu": loss_a, f"loss_{device}": loss_b,
                        "loss_rel_diff": abs(loss_a - loss_b) / max(abs(loss_a), 1e-12),
                        "grad_max_abs_diff_over_max_grad": max(float((grads_a[n] - grads_b[n]).abs().max())
                                                               for n in grads_a) / scale}
    result["agree"] = all(result[n]["loss_rel_diff"] < 1e-4 and result[n]["grad_max_abs_diff_over_max_grad"] < 1e-3
                          for n in ("sdft", "sft"))
    return result


# -- 2. notebook 06 --------------------------------------------------------------------------------
def notebook_path(model_dir: Path, plan: dict, smoke: bool) -> dict:
    """Notebook 06's library calls on `model_dir` (4-bit on CUDA by Config's defaults there)."""
    import torch

    from sdft_kit import Config, Trainer, chat, load_records
    from sdft_kit.check import quick_check
    from sdft_kit.models import is_quantized, memory_report

    start = time.perf_counter()
    out_dir = Path(tempfile.mkdtemp(prefix="sdft-kit-06-")) / "run"
    steps = plan["notebook_steps"]
    config = Config().replace(model=str(model_dir), steps=steps, batch_size=2, max_new_tokens=plan["new_tokens"] // 4,
                              learning_rate=5e-4, lora_r=16, teacher="ema", save_every=steps,
                              load_in_4bit=True if smoke else None)
    trainer = Trainer(config, examples(plan["teacher_tokens"] // 4), out_dir)
    quantized = is_quantized(trainer.model)
    check = quick_check(trainer, progress=False)
    records = trainer.train(progress=False)
    memory = memory_report()
    saved = load_records(out_dir)
    answer = chat(trainer.model, trainer.tokenizer, "What is 2 + 2?", 8)
    ema_mb = sum(t.numel() * t.element_size() for t in trainer.teacher.state_dict().values()) / 2**20
    result = {"device": str(trainer.device), "4bit": bool(quantized), "steps": len(records), "records_on_disk": len(saved),
              "losses": [r["loss"] for r in records], "check": check.summary().splitlines()[0],
              "memory": memory, "ema_teacher_mb": round(ema_mb, 1), "chat_chars": len(answer),
              "adapter_saved": (out_dir / "adapter" / "adapter_model.safetensors").is_file(),
              "seconds": round(time.perf_counter() - start, 1)}
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    shutil.rmtree(out_dir.parent, ignore_errors=True)
    return result


# -- 3. shapes: one worker process per method ------------------------------------------------------
def cap_memory(gb: float | None) -> None:
    import torch

    if gb is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(gb * 2**30 / torch.cuda.mem_get_info()[1], 1.0))


def cuda_peaks() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20),
            "peak_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20)}


def sdft_kit_steps(method: str, model_dir: str, precision: str, plan: dict):
    """sdft-kit's Trainer on `model_dir`: warm-up, then one measured step per next()."""
    from sdft_kit import Config, Trainer

    config = Config().replace(model=model_dir, method=method, steps=10_000, batch_size=plan["batch"],
                              max_new_tokens=plan["new_tokens"], engine="hf", lora_r=16, teacher="base",
                              vocab="topk", topk=100, alpha=0.0, learning_rate=5e-4, seed=0,
                              load_in_4bit=precision == "nf4", dtype="bfloat16")
    trainer = Trainer(config, examples(plan["teacher_tokens"]))
    yield from paced(trainer.train_step, plan)


def paced(step, plan: dict):
    """Warm-up steps, None (ready), then one measured step's seconds and peak CUDA memory per next()."""
    import torch

    for _ in range(plan["warmup"]):
        step()
    yield None
    while True:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step()
        yield {"s": time.perf_counter() - start, **cuda_peaks()}


def trl_steps(model_dir: str, precision: str, plan: dict):
    """TRL's SDFTTrainer, paused between steps (its callback waits for the next request)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from sdft_kit import PAPER_TEMPLATE

    data = Dataset.from_list([{"prompt": list(ex.messages), "privileged_context": ex.demonstration}
                              for ex in examples(plan["teacher_tokens"])])
    go, done = queue.Queue(), queue.Queue()

    class Paced(TrainerCallback):
        def on_step_begin(self, *_, **__):
            go.get()
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            done.put(time.perf_counter() - self.start)

    cuda = torch.cuda.is_available()
    init = {"dtype": torch.bfloat16}
    if precision == "nf4":
        init["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_use_double_quant=True,
                                                         bnb_4bit_compute_dtype=torch.bfloat16)
    config = SDFTConfig(
        output_dir=tempfile.mkdtemp(prefix="sdft-kit-gpu-trl-"), max_steps=10_000,
        per_device_train_batch_size=plan["batch"], gradient_accumulation_steps=1, num_generations=1,
        max_completion_length=plan["new_tokens"], learning_rate=5e-4, max_grad_norm=1.0, temperature=1.0,
        teacher_model_kind="base", distillation_alpha=0.0, distillation_mode="topk_logits", distillation_topk=100,
        distillation_add_tail=True, num_loss_tokens_to_skip=3,
        teacher_prompt_template=PAPER_TEMPLATE.replace("{demonstration}", "{privileged_context}"),
        bf16=cuda, gradient_checkpointing=False, use_cpu=not cuda, report_to=[], save_strategy="no",
        logging_steps=1, seed=0, disable_tqdm=True, model_init_kwargs=init)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SDFTTrainer(model=model_dir, args=config, train_dataset=data, peft_config=lora, callbacks=[Paced()])

    def train():
        try:
            trainer.train()
        except BaseException as error:  # an out-of-memory error ends TRL's loop: hand it to the driver's request
            done.put(error)

    threading.Thread(target=train, daemon=True).start()

    def step():
        go.put(None)
        answer = done.get()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    yield from paced(step, plan)


def serve(method: str, model_dir: str, precision: str, plan: dict) -> None:
    """Worker: 'ready', then one JSON line per 'step' line read. On CUDA it starts capped at 15 GB; a step (or the
    loading) that runs out of memory there starts again under 24 GB, and the answer says which caps it fits."""
    import torch

    out = os.fdopen(os.dup(1), "w")  # the protocol's own channel: libraries' prints go to stderr
    os.dup2(2, 1)
    caps = list(CAPS_GB) if torch.cuda.is_available() else [None]
    fits: dict[str, bool] = {}

    def answer(figures: dict) -> None:
        out.write(json.dumps(figures) + "\n")
        out.flush()

    def start():
        """Steps under the lowest cap left that loads and warms up, or None."""
        while caps:
            cap_memory(caps[0])
            try:
                steps = trl_steps(model_dir, precision, plan) if method == "trl" else sdft_kit_steps(
                    method, model_dir, precision, plan)
                next(steps)
                return steps
            except torch.OutOfMemoryError:
                steps = None
                out_of_memory()
        return None

    def out_of_memory() -> None:
        fits[str(caps.pop(0))] = False
        say(f"{method}: out of memory under the {list(fits)[-1]} GB cap")
        gc.collect()
        torch.cuda.empty_cache()

    steps = start()
    if steps is None:
        return answer({"oom": True, "fits": fits})
    answer({"ready": True})
    for line in sys.stdin:
        if line.strip() != "step":
            return
        while True:
            try:
                figures = next(steps)
                break
            except torch.OutOfMemoryError:
                steps = None
                out_of_memory()
                steps = start()
                if steps is None:
                    return answer({"oom": True, "fits": fits})
        answer({**figures, "cap_gb": caps[0], "fits": {**fits, str(caps[0]): True}})


class Worker:
    def __init__(self, method: str, model_dir: Path, precision: str, plan: dict, log: Path):
        self.method = method
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", method, "--model-dir", str(model_dir), "--precision", precision,
             "--plan", json.dumps(plan)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout] + [self.lines.put("")],
                         daemon=True).start()

    def answer(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.method} gave no answer within {timeout:.0f} s") from None
        if not line:
            self.log.flush()
            tail = Path(self.log.name).read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{self.method} exited; the end of its log: {tail}")
        return line

    def request(self, timeout: float) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return json.loads(self.answer(timeout))

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait()


def measure_shape(shape: str, precision: str, model_dir: Path, plan: dict, logs: Path, deadline: float) -> dict:
    """SDFT, SFT and TRL on one shape and precision, each its own process, interleaved in rounds."""
    methods = [m for m in METHODS if m != "trl" or _importable("trl")]
    result = {m: {"steps": []} for m in methods}
    if "trl" not in methods:
        result["trl"] = {"not_run": "trl is not installed"}
    workers = {m: Worker(m, model_dir, precision, plan, logs / f"gpu-check-{shape}-{precision}-{m}.log")
               for m in methods}
    try:
        for method, worker in list(workers.items()):  # they load side by side
            try:
                line = json.loads(worker.answer(max(deadline - time.perf_counter(), 1)))
                if not line.get("ready"):
                    result[method].update(line)  # out of memory under every cap while loading
                    worker.stop()
                    del workers[method]
            except (TimeoutError, RuntimeError) as error:
                result[method]["error"] = str(error)
                worker.stop()
                del workers[method]
        for round_ in range(plan["rounds"]):
            order = list(workers.items())
            for method, worker in order[round_ % len(order):] + order[:round_ % len(order)] if order else []:
                try:
                    answer = worker.request(max(deadline - time.perf_counter(), 1))
                except (TimeoutError, RuntimeError) as error:
                    result[method]["error"] = str(error)
                    worker.stop()
                    del workers[method]
                    continue
                if answer.get("oom"):
                    result[method].update(answer)
                    worker.stop()
                    del workers[method]
                    continue
                result[method]["steps"].append(answer)
            say(f"  {shape} {precision} round {round_ + 1}: " + ", ".join(
                f"{m} {r['steps'][-1]['s']:.2f} s" for m, r in result.items() if r.get("steps")))
    finally:
        for worker in workers.values():
            worker.stop()
    for method, r in result.items():
        steps = r.get("steps")
        if steps:
            last = steps[-1]
            r.update(s_per_step=statistics.median(s["s"] for s in steps),
                     peak_allocated_mb=max(s.get("peak_allocated_mb", 0) for s in steps),
                     peak_reserved_mb=max(s.get("peak_reserved_mb", 0) for s in steps),
                     cap_gb=last["cap_gb"], fits=last["fits"])
    ratios = {}
    for a, b in (("sdft", "trl"), ("sdft", "sft")):
        if result.get(a, {}).get("s_per_step") and result.get(b, {}).get("s_per_step"):
            ratios[f"{a}/{b}"] = result[a]["s_per_step"] / result[b]["s_per_step"]
    return {"methods": result, "ratios": ratios}


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (automatic without CUDA)")
    parser.add_argument("--tokenizer", help="a tokenizer folder (the GPU kit carries the embedded model's); "
                                            "default: the embedded model's")
    parser.add_argument("--budget-s", type=float, default=420,
                        help="seconds the whole check may take: shapes not started with 90 s left are reported as not "
                             "run, and workers still running at the end are stopped")
    parser.add_argument("--work-dir", help="where the random models are written (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args.worker, args.model_dir, args.precision, json.loads(args.plan))
        return

    import torch

    start = time.perf_counter()
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    plan = SMOKE if smoke else FULL
    device = "cpu" if smoke else "cuda"
    report = {"mode": "cpu-smoke" if smoke else "cuda", "plan": plan, "caps_gb": CAPS_GB,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "versions": {name: _version(name) for name in ("torch", "transformers", "peft", "bitsandbytes", "trl")}}
    say(f"gpu_check: {report['mode']} on {report['device']}; versions {report['versions']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def section(name: str, run) -> None:
        began = time.perf_counter()
        try:
            report[name] = run()
        except Exception as error:  # written down; the next section runs
            report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        report[name + "_s"] = round(time.perf_counter() - began, 1)
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
        say(f"{name} ({report[name + '_s']} s): {json.dumps(report[name], default=str)[:600]}")

    section("agreement", lambda: agreement(args.tokenizer, device))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="sdft-kit-gpu-check-"))
    logs = Path(tempfile.mkdtemp(prefix="sdft-kit-gpu-check-logs-"))  # a failed worker's log tail goes in the JSON
    made: dict[str, Path] = {}

    def model_dir(shape: str) -> Path:
        if shape not in made:
            for old in made.values():  # one shape on disk at a time (4B in bf16 is 8 GB)
                shutil.rmtree(old, ignore_errors=True)
            made.clear()
            made[shape] = save_random_model(shape, work / shape, dtype=torch.bfloat16, device=device,
                                            tokenizer_dir=args.tokenizer)
        return made[shape]

    section("notebook_06", lambda: notebook_path(model_dir(plan["notebook_shape"]), plan, smoke))
    deadline = start + args.budget_s
    shapes = {}
    report["shapes"] = shapes
    for shape in plan["shapes"]:
        for precision in plan["precisions"]:
            key = f"{shape} {precision}"
            if precision == "nf4" and not _importable("bitsandbytes"):
                shapes[key] = {"not_run": "bitsandbytes is not installed"}
                continue
            if time.perf_counter() > deadline - 90:
                shapes[key] = {"not_run": f"time budget ({args.budget_s:.0f} s) spent"}
                continue
            say(f"{key}: loading")
            began = time.perf_counter()
            try:
                shapes[key] = measure_shape(shape, precision, model_dir(shape), plan, logs, deadline)
            except Exception as error:
                shapes[key] = {"error": f"{type(error).__name__}: {error}"}
            shapes[key]["seconds"] = round(time.perf_counter() - began, 1)
            args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
            say(f"{key}: " + "; ".join(
                f"{m} {r['s_per_step']:.2f} s/step, peak {r['peak_allocated_mb']} MB allocated, fits {r['fits']}"
                if r.get("s_per_step") else f"{m} {r}" for m, r in shapes[key].get("methods", {}).items()))
    shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    say(f"gpu_check done in {report['wall_s']} s: written to {args.out}")


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
