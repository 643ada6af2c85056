"""GGUF export round trip: for the embedded SmolLM2 and tiny random Llama 3 / Qwen3 / Gemma 3 models, a run with a
LoRA adapter that changes the model (random B, std 0.02, seed 0) is exported with `export_gguf` as f16 and q8_0,
each file is loaded back with transformers' GGUF loader, and its next-token log-probs are compared with the
merged float32 model over the whole vocabulary at every position of three chat prompts.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gguf_roundtrip.py   # writes benchmarks/results/gguf_roundtrip.json

Reported per model and type:
- max_abs_logprob_diff: the largest |log p difference| over the whole vocabulary (gguf_export.logprob_gap); it
  is set by the rarest tokens (log p near -30), so also: top10_max_abs_diff (the reference's 10 likeliest
  tokens at each position), max_kl (KL(merged || file) at the worst position) and argmax_agreement;
- the physical floor: the same figures for the merged model with its weights rounded in memory exactly as the
  type rounds them (f16; Q8_0 blocks through gguf.quants), no file involved. A file at the floor adds no error
  of its own (names, layouts and metadata are right); what is left is the rounding of the type itself;
- beside them, what the adapter changed (merged vs base): a round trip far below it keeps the fine-tuning;
- the file size beside its lower bound (f16: 2 bytes a weight; q8_0: 34 bytes per 32 weights), and where
  transformers took the config from ("file", or "original" where its loader ignores a key we write).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from tiny_models import build_tiny_model, write_lora_run  # noqa: E402

from sdft_kit.config import Config  # noqa: E402
from sdft_kit.gguf_export import (VERIFY_PROMPTS, Q8_0_BLOCK, export_gguf, load_gguf_back,  # noqa: E402
                                  quantize_q8_0)
from sdft_kit.models import load_adapter, load_model  # noqa: E402

TYPES = ("f16", "q8_0")
BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 34 / 32}


def compare(reference, other, tokenizer) -> dict:
    """Next-token distributions of `other` against `reference`, every position of the chat-rendered prompts."""
    worst = {"max_abs_logprob_diff": 0.0, "top10_max_abs_diff": 0.0, "max_kl": 0.0}
    agree = total = 0
    for prompt in VERIFY_PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            p = torch.log_softmax(reference(ids).logits.float(), -1)[0]
            q = torch.log_softmax(other(ids).logits.float(), -1)[0]
        top = p.topk(10, dim=-1).indices
        worst["max_abs_logprob_diff"] = max(worst["max_abs_logprob_diff"], float((p - q).abs().max()))
        worst["top10_max_abs_diff"] = max(worst["top10_max_abs_diff"], float((p.gather(-1, top) - q.gather(-1, top)).abs().max()))
        worst["max_kl"] = max(worst["max_kl"], float((p.exp() * (p - q)).sum(-1).max()))
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        total += p.shape[0]
    return {name: float(f"{value:.3g}") for name, value in worst.items()} | {"argmax_agreement": f"{agree}/{total}"}


def rounded_in_memory(model, gguf_type: str):
    """A copy of the model with every matrix rounded as the GGUF type stores it (vectors stay float32)."""
    import copy

    import gguf

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.ndim < 2:
                continue
            if gguf_type == "f16":
                p.copy_(p.half().float())
            elif p.shape[-1] % Q8_0_BLOCK == 0:
                blocks = quantize_q8_0(p.numpy())
                p.copy_(torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)).reshape(p.shape))
            else:
                p.copy_(p.half().float())
    return rounded


def measure(label: str, base: str, work: Path) -> dict:
    run = write_lora_run(base, work / f"run-{label}")
    start = time.perf_counter()
    result = export_gguf(run, work / f"gguf-{label}", TYPES, verify=True)
    seconds = time.perf_counter() - start
    config = Config.load(run / "config.yaml").replace(dtype="float32", device="cpu")
    adapted, tokenizer = load_adapter(run / "adapter", config.model)
    merged = adapted.merge_and_unload().eval()
    base_model, _ = load_model(base, config.model)
    adapter_effect = compare(merged, base_model.eval(), tokenizer)
    weights = sum(p.numel() for p in base_model.parameters())
    rows = {}
    for path in result.files:
        gguf_type = path.stem.removeprefix("model-")
        restored, source = load_gguf_back(path, merged.config)
        rows[gguf_type] = {"file": compare(merged, restored, tokenizer),
                           "floor_rounded_in_memory": compare(merged, rounded_in_memory(merged, gguf_type), tokenizer),
                           "verify_gap": result.gaps[gguf_type], "config_from": source,
                           "file_mb": round(path.stat().st_size / 2**20, 2),
                           "weights_mb_lower_bound": round(weights * BYTES_PER_WEIGHT[gguf_type] / 2**20, 2)}
        del restored
    for gguf_type, row in rows.items():
        print(f"{label:>8} {gguf_type:>4}: file {row['file']}\n{'':>14}floor {row['floor_rounded_in_memory']}  "
              f"({row['file_mb']} MB)", flush=True)
    print(f"{label:>8} adapter effect (merged vs base): {adapter_effect}; notes: {result.notes}", flush=True)
    return {"base": base, "architecture": base_model.config.model_type, "weights": weights, "types": rows,
            "adapter_effect_merged_vs_base": adapter_effect, "export_and_verify_seconds": round(seconds, 1),
            "notes": result.notes}


def main() -> None:
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        bases = {"smollm2": "embedded"}
        for family in ("llama3", "qwen3", "gemma3"):
            bases[family] = str(build_tiny_model(family, work / f"tiny-{family}"))
        for label, base in bases.items():
            results[label] = measure(label, base, work)
    for label, row in results.items():
        if not row["base"] == "embedded":
            row["base"] = f"tests/tiny_models.py {label} (random weights)"
    out = ROOT / "benchmarks" / "results" / "gguf_roundtrip.json"
    out.write_text(json.dumps({"command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gguf_roundtrip.py",
                               "torch_threads": 1, "prompts": "gguf_export.VERIFY_PROMPTS, every position, full vocabulary",
                               "results": results}, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
