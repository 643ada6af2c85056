"""Seeded training on fixed configs, recorded exactly: does a refactor change what a run computes?

    python benchmarks/equivalence.py --out new.json                         # this checkout
    python benchmarks/equivalence.py --out old.json --checkout ../old       # another checkout of sdft-kit
    python benchmarks/equivalence.py --compare old.json new.json            # bit-identical, or what differs
    python benchmarks/equivalence.py --out new.json --ema-as factor_ema     # 'ema' as it was before the weight EMA

Each config trains 2 steps of the embedded model (batch 2, 16 new tokens, 1 thread) from seed 0 and
keeps, per step, the loss, the gradient norm, the mean KL, the token count and the first sample's token
ids and per-token values, then a digest of the adapter's weights. Every value is written exactly (floats
as their hex form), so --compare tells bit-identical from merely close. Every field that a preset or a
default could change is set explicitly, so a change of defaults does not show as a difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

EXPLICIT = {"steps": 2, "batch_size": 2, "max_new_tokens": 16, "threads": 1, "learning_rate": 1e-3,
            "template": "paper", "skip_first": 3, "teacher": "ema", "ema_rate": 0.01, "alpha": 0.0,
            "vocab": "full", "topk": 100, "temperature": 1.0, "top_p": 1.0, "generations_per_prompt": 1,
            "grad_accum": 1, "chunk_size": 1, "demo_selection": "own", "warmup_ratio": 0.1, "seed": 0,
            "lora_r": 16, "lora_alpha": 32, "release_memory": True, "report_to": "none", "engine": "hf"}
CONFIGS = {
    "sdft-ema-full": {},
    "sdft-base-system": {"teacher": "base", "template": "system", "skip_first": 0},
    "sdft-live-topk": {"teacher": "live", "vocab": "topk", "topk": 20},
    "sdft-jsd-sampled": {"alpha": 0.5, "vocab": "sampled"},
    "sdft-reverse-chunks": {"alpha": 1.0, "chunk_size": 0, "grad_accum": 2},
    "sdft-retrieval-2gen": {"demo_selection": "retrieval", "generations_per_prompt": 2, "template": "plain"},
    "sdft-temperature": {"temperature": 0.7, "top_p": 0.9},
    "sft": {"method": "sft"},
}


def _exact(value):
    return float(value).hex() if isinstance(value, float) else value


def record_configs(ema_as: str | None = None) -> dict:
    import torch

    from sdft_kit import Config, Trainer, load_examples
    from sdft_kit.data import SAMPLE_DATA
    from sdft_kit.models import lora_parameters

    examples = load_examples(SAMPLE_DATA)
    results = {}
    for name, overrides in CONFIGS.items():
        fields = {**EXPLICIT, **overrides}
        if ema_as and fields["teacher"] == "ema":  # compare with a checkout whose 'ema' was another teacher
            fields["teacher"] = ema_as
        config = Config().replace(**fields)
        trainer = Trainer(config, examples)
        steps = []
        for record in trainer.steps():
            sample = record["sample"]
            steps.append({key: _exact(record[key]) for key in ("loss", "grad_norm", "mean_kl", "tokens")}
                         | {"token_ids": sample["token_ids"], "values": [_exact(v) for v in sample["values"]]})
        digest = hashlib.sha256()
        for param_name, tensor in sorted(lora_parameters(trainer.model).items()):
            digest.update(param_name.encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        results[name] = {"steps": steps, "adapter_sha256": digest.hexdigest()}
        trainer.close()
        print(f"{name}: losses {[float.fromhex(s['loss']) for s in steps]}", flush=True)
    return results


def compare(old: dict, new: dict) -> list[str]:
    """The differences, one line each: none means bit-identical."""
    lines = []
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new:
            lines.append(f"{name}: only in {'new' if name in new else 'old'}")
            continue
        a, b = old[name], new[name]
        if a["adapter_sha256"] != b["adapter_sha256"]:
            lines.append(f"{name}: adapter weights differ")
        for i, (x, y) in enumerate(zip(a["steps"], b["steps"])):
            lines += [f"{name} step {i + 1}: {key} {x[key]} != {y[key]}" for key in x if x[key] != y.get(key)]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the recorded runs here (JSON)")
    parser.add_argument("--checkout", help="record another checkout of sdft-kit (its sdft_kit package) instead")
    parser.add_argument("--ema-as", help="record teacher 'ema' as this kind (factor_ema: what 'ema' was before the "
                                         "weight EMA, to compare with a checkout from then)")
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two recordings")
    args = parser.parse_args()
    if args.compare:
        old, new = (json.loads(Path(p).read_text()) for p in args.compare)
        lines = compare(old, new)
        print("\n".join(lines) if lines else f"bit-identical: {len(new)} configs, every step's loss, gradient norm, "
              "mean KL, tokens, sample ids and values, and the adapters' weights")
        return 1 if lines else 0
    if args.checkout:
        env = {**os.environ, "PYTHONPATH": str(Path(args.checkout).resolve())}
        return subprocess.call([sys.executable, __file__, "--out", str(Path(args.out).resolve())], env=env,
                               cwd=args.checkout)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = record_configs(args.ema_as)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
