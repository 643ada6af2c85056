"""The vllm engine on this CPU: start-up, resident memory, rollout and weight-sync cost, by setting (1 thread).

    python benchmarks/vllm_engine.py                 # -> benchmarks/results/vllm_engine.json

Variants, each in its own process, one after another (the embedded model, LoRA r16 moved away
from zero, 4 bundled prompts x 64 sampled tokens, 2 rollouts after a warm-up one, each after an
`after_step()` so each pays a weight sync):
    float32 / bfloat16   the engine's dtype (`vllm_dtype`; 'auto' picks bf16 only with native bf16)
    kv256                the old fixed 256 MiB KV cache instead of one sized from the run
    lora-request         the adapter served as a vLLM LoRA request (saved to disk, loaded by vLLM each
                         step) instead of merged weights pushed with reload_weights
and two whole 12-step runs (Trainer built and trained: engine start included), engine 'hf' and
'vllm', to weigh the engine's start against what it saves in a short run. Seconds are process CPU
seconds (one thread: the run's own cost on a shared machine) beside wall seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "vllm_engine.json"
VARIANTS = ["bfloat16", "float32", "kv256", "lora-request", "run12-hf", "run12-vllm"]


def clock():
    return time.perf_counter(), time.process_time()


def since(start) -> dict:
    return {"wall_s": round(time.perf_counter() - start[0], 3), "cpu_s": round(time.process_time() - start[1], 3)}


def run12(engine: str) -> dict:
    from sdft_kit import SAMPLE_DATA, Config, Trainer, load_examples

    start = clock()
    trainer = Trainer(Config().replace(engine=engine, steps=12, batch_size=4, max_new_tokens=64, teacher="base",
                                       vocab="topk", topk=100, threads=1, seed=0), load_examples(SAMPLE_DATA))
    built = since(start)
    records = trainer.train(progress=False)
    engine_start = trainer.engine.start_seconds if engine == "vllm" else 0.0
    return {"built": built, "total": since(start), "engine_start_s": round(engine_start, 2),
            "median_step_s": statistics.median(r["seconds"]["total"] for r in records),
            "first_step_s": records[0]["seconds"]["total"]}


def engine_variant(variant: str) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from sdft_kit import SAMPLE_DATA, RolloutConfig, load_examples
    from sdft_kit.demos import student_prompt
    from sdft_kit.models import release_freed_memory
    from sdft_kit.rollout import make_engine
    from sdft_kit.vllm_engine import resident_mb
    from test_fast_paths import _perturbed_lora_model

    release_freed_memory()
    model, tokenizer = _perturbed_lora_model()
    prompts = [student_prompt(tokenizer, ex) for ex in load_examples(SAMPLE_DATA)[:4]]
    longest = max(len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts)
    dtype = "float32" if variant == "float32" else "bfloat16"
    config = RolloutConfig(engine="vllm", vllm_dtype=dtype, max_new_tokens=64, vllm_kv_cache_mb=256 if variant == "kv256" else 0)
    before, start = resident_mb(), clock()
    if variant == "lora-request":
        return lora_requests(model, tokenizer, prompts, before)
    engine = make_engine(model, tokenizer, config, sequences=4, longest_prompt=longest)
    started = since(start)
    rollouts = []
    for i in range(3):
        engine.after_step()  # as after an optimizer step: the next rollout syncs first
        start = clock()
        batch = engine.sample(prompts)
        rollouts.append({**since(start), "sync_s": round(engine.sync_seconds, 3),
                         "tokens": int(batch.completion_mask.sum())})
    measured = rollouts[1:]  # the first one warms up
    return {"dtype": engine.dtype, "kv_cache_mb": engine.shared.kv_cache_mb, "start": started,
            "resident_mb": round(resident_mb() - before), "rollouts": rollouts,
            "rollout_cpu_s": statistics.median(r["cpu_s"] for r in measured),
            "rollout_wall_s": statistics.median(r["wall_s"] for r in measured),
            "sync_s": statistics.median(r["sync_s"] for r in measured), "threads": torch.get_num_threads()}


def lora_requests(model, tokenizer, prompts: list[str], before: float) -> dict:
    """The adapter as a LoRA request: vLLM applies it at every token (no merge); each step saves and loads it."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from sdft_kit.vllm_engine import resident_mb

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    start = clock()
    llm = LLM(model=model.config.name_or_path, dtype="bfloat16", seed=0, enforce_eager=True, max_model_len=256,
              kv_cache_memory_bytes=32 * 2**20, enable_lora=True, max_lora_rank=16, max_loras=1)
    started = since(start)
    requests = [TokensPrompt(prompt_token_ids=tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    params = SamplingParams(temperature=1.0, max_tokens=64, logprobs=0, seed=0, detokenize=False)
    folder, rollouts = tempfile.mkdtemp(), []
    for step in range(1, 4):
        start = clock()
        model.save_pretrained(folder)  # what a sync costs here: write the adapter, vLLM reads it
        saved = since(start)
        outputs = llm.generate(requests, [params] * len(requests), lora_request=LoRARequest(f"step{step}", step, folder),
                               use_tqdm=False)
        rollouts.append({**since(start), "sync_s": saved["wall_s"],
                         "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)})
    measured = rollouts[1:]
    return {"dtype": "bfloat16", "start": started, "resident_mb": round(resident_mb() - before), "rollouts": rollouts,
            "rollout_cpu_s": statistics.median(r["cpu_s"] for r in measured),
            "rollout_wall_s": statistics.median(r["wall_s"] for r in measured),
            "sync_s": statistics.median(r["sync_s"] for r in measured)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        import torch

        torch.set_num_threads(1)
        variant = sys.argv[2]
        result = run12(variant.removeprefix("run12-")) if variant.startswith("run12") else engine_variant(variant)
        print("RESULT " + json.dumps(result), flush=True)
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("SDFT_KIT_AUTO_ENGINE", None)
    variants = sys.argv[1].split(",") if len(sys.argv) > 1 else VARIANTS
    # variants measured by an earlier run are kept (the file is rewritten after each one)
    report = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"variants": {}}
    report["load_average_start"] = os.getloadavg()
    for variant in variants:
        done = subprocess.run([sys.executable, __file__, "--variant", variant], capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        report["variants"][variant] = json.loads(lines[-1][7:]) if lines else {"error": done.stderr[-1500:]}
        print(variant, json.dumps(report["variants"][variant]), flush=True)
        report["load_average_end"] = os.getloadavg()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"(written to {RESULTS})")


if __name__ == "__main__":
    main()
