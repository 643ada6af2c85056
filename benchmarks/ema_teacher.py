"""How close each EMA-teacher representation stays to the exact EMA of the weights, and what it costs.

    python benchmarks/ema_teacher.py                               # lr 1e-3, 60 steps
    python benchmarks/ema_teacher.py --lr 5e-3 --out benchmarks/results/ema_teacher_lr5e-3.json
    python benchmarks/ema_teacher.py --memory-only                 # the memory table for 4B/7B models

One SDFT run of the embedded model (LoRA r16 on every linear layer, batch 2, 24 new tokens,
template 'system', skip_first 0, 1 torch thread) trains with the exact weight-EMA teacher
(teacher 'ema', ema_rank 0: a dense delta per adapted layer). After every optimizer step every
other teacher kind is updated from the same student weights (the order rotates each step):
    ema rank 1, 2, 4   the weight EMA kept at rank k = 1, 2, 4 x r (`LowRankDelta`)
    factor_ema         the EMA of A and B taken apart, starting at the initial factors (sdft-kit's old 'ema')
    factor_ema_zero    the same starting at zero (TRL's PEFT EMA teacher), at the same rate
    ema anchor         the dense weight EMA anchored to the base (`--anchor`)
    base               the adapter disabled
    live               the student itself (how far the student is from the dense EMA teacher)
At the evaluation steps each kind's effective weight delta is compared with the dense EMA's
(relative Frobenius error over all adapted layers), and each kind scores a fixed set of rollouts
(sampled from the initial model before training): the mean and max per-token KL(dense EMA || kind)
over the completion tokens. Also timed per kind, in process CPU seconds (one thread: the cost on an idle
core, whatever the machine's load) and wall seconds: the update after each step (median, min-max) and
one teacher pass over the fixed rollouts; memory: the bytes of each kind's state. The memory each
kind would need for a 4B / 7B model's LoRA is computed from the models' shapes (meta device, no
weights). Writes JSON (default benchmarks/results/ema_teacher.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "ema_teacher.json"
# Public config.json values of the two larger models (Qwen/Qwen3-4B, Qwen/Qwen2.5-7B-Instruct): shapes only.
LARGE_MODELS = {
    "Qwen3-4B": ("qwen3", dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)),
    "Qwen2.5-7B": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                 tie_word_embeddings=False)),
}


def linear_shapes(family: str, values: dict) -> list[tuple[int, int]]:
    """(d_out, d_in) of every linear layer LoRA 'all-linear' adapts (the LM head excepted), from a meta-device model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")]


def memory_table(r: int = 16) -> dict:
    """Bytes of teacher state (float32) each kind needs for these models' all-linear LoRA of rank r."""
    table = {}
    for name, (family, values) in LARGE_MODELS.items():
        shapes = linear_shapes(family, values)
        dense = sum(o * i for o, i in shapes) * 4
        per_rank = sum(o + i for o, i in shapes) * 4  # one rank's U column + V row, or one LoRA rank's A row + B column
        table[name] = {"adapted_layers": len(shapes), "adapted_weights": dense // 4,
                       "dense_GB": dense / 1e9, **{f"rank{k}_MB": k * r * per_rank / 1e6 for k in (1, 2, 4)},
                       "factor_ema_MB": r * per_rank / 1e6, "lora_r": r}
    return table


def state_bytes(teacher) -> int:
    return sum(t.numel() * t.element_size() for t in teacher.state_dict().values())


def effective_deltas(kind: str, teacher, layers) -> dict[str, torch.Tensor]:
    """Each adapted layer's teacher weight delta (d_out, d_in), whatever the representation."""
    from sdft_kit.teachers import WeightEMATeacher

    if isinstance(teacher, WeightEMATeacher):
        return {name: delta.full() for name, delta in teacher.deltas.items()}
    if kind == "base":
        return {name: torch.zeros_like(teacher_full(layer)) for name, layer in layers.items()}
    out = {}
    for name, layer in layers.items():  # the factor EMAs: s * EMA(B) @ EMA(A)
        prefix = name + "."
        a = teacher.shadow[prefix + "lora_A.default.weight"]
        b = teacher.shadow[prefix + "lora_B.default.weight"]
        out[name] = layer.scaling["default"] * b.float() @ a.float()
    return out


def teacher_full(layer) -> torch.Tensor:
    return layer.lora_B["default"].weight.detach().float() @ layer.lora_A["default"].weight.detach().float()


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)} if values \
        else {}


def relative_error(deltas: dict, reference: dict) -> float:
    num = sum(float((deltas[n] - reference[n]).pow(2).sum()) for n in reference)
    den = sum(float(reference[n].pow(2).sum()) for n in reference)
    return (num / den) ** 0.5 if den else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rate", type=float, default=0.01, help="EMA rate of every kind")
    parser.add_argument("--anchor", type=float, default=0.01, help="anchor of the anchored kind")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--eval-at", default="1,10,25,50,60")
    parser.add_argument("--fixed-rollouts", type=int, default=8, help="rollouts scored by every kind at each eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--memory-only", action="store_true")
    args = parser.parse_args()

    result = {"command": "python " + " ".join(sys.argv), "memory_large_models": memory_table()}
    if args.memory_only:
        print(json.dumps(result, indent=1))
        return

    from sdft_kit import SAMPLE_DATA, Config, Trainer, load_examples
    from sdft_kit.config import TeacherConfig
    from sdft_kit.demos import student_prompt, teacher_prompt
    from sdft_kit.losses import kl
    from sdft_kit.rollout import rollout
    from sdft_kit.scoring import score_teacher
    from sdft_kit.teachers import make_teacher, lora_layers

    torch.set_num_threads(1)
    examples = load_examples(SAMPLE_DATA)
    config = Config().replace(steps=args.steps, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                              learning_rate=args.lr, teacher="ema", ema_rank=0, ema_rate=args.rate, template="system",
                              skip_first=0, seed=args.seed, threads=1)
    trainer = Trainer(config, examples)
    model, tokenizer = trainer.model, trainer.tokenizer
    layers = lora_layers(model)
    kinds = {
        "ema rank 1": TeacherConfig(teacher="ema", ema_rate=args.rate, ema_rank=1),
        "ema rank 2": TeacherConfig(teacher="ema", ema_rate=args.rate, ema_rank=2),
        "ema rank 4": TeacherConfig(teacher="ema", ema_rate=args.rate, ema_rank=4),
        "factor_ema": TeacherConfig(teacher="factor_ema", ema_rate=args.rate),
        "factor_ema_zero": TeacherConfig(teacher="factor_ema", ema_rate=args.rate),
        f"ema anchor {args.anchor:g}": TeacherConfig(teacher="ema", ema_rate=args.rate, ema_rank=0, anchor=args.anchor),
        "base": TeacherConfig(teacher="base"),
        "live": TeacherConfig(teacher="live"),
    }
    teachers = {"ema dense": trainer.teacher, **{k: make_teacher(model, c) for k, c in kinds.items()}}
    for shadow in teachers["factor_ema_zero"].shadow.values():
        shadow.zero_()  # TRL's PEFTAdapterEMACallback: the teacher adapter starts at zero

    # Fixed rollouts from the initial model, with their teacher prompts (template 'system').
    torch.manual_seed(1234)
    picked = examples[: args.fixed_rollouts // 2]
    fixed = rollout(model, tokenizer, [student_prompt(tokenizer, ex) for ex in picked for _ in range(2)],
                    config.rollout)
    fixed = fixed.with_teacher_prompts(tokenizer, [teacher_prompt(tokenizer, ex, [ex.demonstration], "system")
                                                   for ex in picked for _ in range(2)])
    mask = fixed.completion_mask.bool()

    eval_at = {int(x) for x in args.eval_at.split(",")}
    update_s = {k: [] for k in teachers}
    dense_update = teachers["ema dense"].after_step

    def timed_dense_update() -> None:  # the trainer's own teacher, updated inside its step
        start, cpu = time.perf_counter(), time.process_time()
        dense_update()
        update_s["ema dense"].append((time.process_time() - cpu, time.perf_counter() - start))

    teachers["ema dense"].after_step = timed_dense_update
    names = [k for k in teachers if k != "ema dense"]
    evals, steps = [], []
    for record in trainer.steps():
        step = record["step"]
        order = names[step % len(names):] + names[: step % len(names)]
        for kind in order:
            start, cpu = time.perf_counter(), time.process_time()
            teachers[kind].after_step()
            update_s[kind].append((time.process_time() - cpu, time.perf_counter() - start))
        steps.append({"step": step, "loss": record["loss"], "s": record["seconds"]})
        print(f"step {step}: loss {record['loss']:.4f} ({record['seconds']['total']:.1f} s)", flush=True)
        if step not in eval_at:
            continue
        reference = effective_deltas("ema dense", teachers["ema dense"], layers)
        scores, pass_s = {}, {}
        for kind in [*order, "ema dense"]:
            start, cpu = time.perf_counter(), time.process_time()
            scores[kind] = score_teacher(teachers[kind], fixed).logprobs
            pass_s[kind] = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - start}
        row = {"step": step, "dense_ema_delta_norm": sum(float(d.pow(2).sum()) for d in reference.values()) ** 0.5,
               "dense_teacher_pass": pass_s["ema dense"], "kinds": {}}
        for kind in names:
            per_token = kl(scores["ema dense"], scores[kind])[mask]
            deltas = (effective_deltas(kind, teachers[kind], layers) if kind != "live" else
                      {name: layer.scaling["default"] * teacher_full(layer) for name, layer in layers.items()})
            row["kinds"][kind] = {"kl_mean": float(per_token.mean()), "kl_max": float(per_token.max()),
                                  "delta_rel_error": relative_error(deltas, reference), "teacher_pass": pass_s[kind]}
        evals.append(row)
        print(json.dumps(row), flush=True)

    result.update({
        "settings": vars(args) | {"lora_r": config.model.lora_r, "template": "system", "skip_first": 0,
                                  "threads": torch.get_num_threads(), "python": platform.python_version(),
                                  "torch": torch.__version__},
        "state_MB": {k: state_bytes(t) / 2**20 for k, t in teachers.items()},
        "update_cpu_s": {k: spread([c for c, _ in v]) for k, v in update_s.items()},
        "update_wall_s": {k: spread([w for _, w in v]) for k, v in update_s.items()},
        "evals": evals, "steps": steps,
    })
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
