"""Which importance weighting corrects rollouts from other weights best: per token, per sequence, or none?

    python benchmarks/is_level.py                    # 12 mini-batches per estimator, 24 new tokens

When the rollouts come from a sampler whose weights differ from the student's (vLLM in bf16, or
weights a few steps old), the loss's gradient is an off-policy estimate of the gradient the
student's own rollouts would give. This measures how far each estimate lands from that gradient:

  1. The student: the embedded model with a LoRA adapter (r16) set off its zero start at random
     (seeded), so that it differs from the base; the teacher: the base with the demonstration
     (template 'system', forward KL, full vocabulary, no token skipped), as the default settings.
  2. The reference: the mean LoRA gradient over `--batches` on-policy mini-batches (one rollout
     of each of 4 prompts per mini-batch, sampled from the student itself, 24 new tokens).
  3. For each sampler, `--batches` mini-batches sampled from it with the same prompts; on each,
     the loss's gradient with the importance weights at level 'token', 'sequence' (the official
     code's) and none (the sampler's tokens taken as the student's), cap 2.
        bf16 copy   the student cast to bfloat16 (a stand-in for vLLM's bf16 copy of it)
        stale base  the base model (adapter off): a sampler far behind the student
  4. Per estimator: the mean cosine of a mini-batch's gradient to the reference, and its relative
     error ||g - g_ref|| / ||g_ref||, squared and corrected for the reference's own sampling noise
     (E||g - g_ref_hat||^2 = MSE + Var(g_ref_hat), the latter from the on-policy mini-batches), as
     the root of the mean; the on-policy mini-batches' own error is the floor any estimator meets.
     Also the mismatch: mean importance weight and the share of tokens capped.
Writes JSON (default benchmarks/results/is_level.json). 1 torch thread.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "is_level.json"
LEVELS = ("token", "sequence", "none")


def flat_grad(model, lora) -> torch.Tensor:
    grad = torch.cat([p.grad.flatten().double() for p in lora])
    model.zero_grad(set_to_none=True)
    return grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=12, help="mini-batches per estimator (4 rollouts each)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--perturb", type=float, default=0.02, help="std of the random LoRA start (A and B)")
    parser.add_argument("--cap", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from perturbed_student import perturbed_student
    from sdft_kit import SAMPLE_DATA, load_examples
    from sdft_kit.batch import completion_logits
    from sdft_kit.config import LossConfig, RolloutConfig, TeacherConfig
    from sdft_kit.demos import student_prompt, teacher_prompt
    from sdft_kit.losses import log_probs
    from sdft_kit.rollout import rollout
    from sdft_kit.scoring import score_teacher
    from sdft_kit.teachers import make_teacher
    from sdft_kit.update import distill_loss

    model, tokenizer, lora = perturbed_student(args.seed, args.perturb)
    teacher = make_teacher(model, TeacherConfig(teacher="base"))
    examples = load_examples(SAMPLE_DATA)[:4]
    student_prompts = [student_prompt(tokenizer, ex) for ex in examples]
    teacher_prompts = [teacher_prompt(tokenizer, ex, [ex.demonstration], "system") for ex in examples]
    rollout_config = RolloutConfig(max_new_tokens=args.max_new_tokens)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)

    samplers = {"bf16 copy": bf16, "stale base": None}

    def sample(name: str | None):
        """One mini-batch (a rollout per prompt) from the student (None) or a sampler, with the sampler's log-probs."""
        if name == "stale base":
            with model.disable_adapter():
                batch = rollout(model, tokenizer, student_prompts, rollout_config)
                with torch.no_grad():
                    logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
        else:
            source = model if name is None else samplers[name]
            batch = rollout(source, tokenizer, student_prompts, rollout_config)
            with torch.no_grad():
                logits = completion_logits(source, batch.prompt_ids, batch.prompt_mask, batch)
        sampled = log_probs(logits).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
        batch = batch.with_teacher_prompts(tokenizer, teacher_prompts)
        return batch if name is None else dataclasses.replace(batch, sampler_logprobs=sampled)

    def gradient(batch, level: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        config = LossConfig(skip_first=0, is_cap=args.cap, is_level="token" if level == "none" else level)
        scored = dataclasses.replace(batch, sampler_logprobs=None) if level == "none" else batch
        scores = score_teacher(teacher, scored, config)
        student = distill_loss(model, scored, scores, config)
        student.loss.backward()
        return flat_grad(model, lora), student

    # 1. the on-policy reference
    on_policy = []
    for b in range(args.batches):
        on_policy.append(gradient(sample(None), "token")[0])
        print(f"on-policy mini-batch {b + 1}/{args.batches}", flush=True)
    reference = torch.stack(on_policy).mean(0)
    # the reference's own sampling noise: Var of one mini-batch's gradient / number of mini-batches
    spread = sum(float((g - reference).pow(2).sum()) for g in on_policy) / (len(on_policy) - 1)
    ref_noise = spread / len(on_policy)
    ref_norm2 = float(reference.pow(2).sum()) - ref_noise  # ||E g||^2, unbiased

    def summary(grads: list[torch.Tensor]) -> dict:
        cos = [float(g @ reference / (g.norm() * reference.norm())) for g in grads]
        mse = sum(float((g - reference).pow(2).sum()) for g in grads) / len(grads) - ref_noise
        return {"mean_cosine": sum(cos) / len(cos), "min_cosine": min(cos), "max_cosine": max(cos),
                "relative_error": max(mse, 0.0) ** 0.5 / ref_norm2 ** 0.5}

    result = {"command": "python " + " ".join(sys.argv), "settings": vars(args) | {
        "lora_r": 16, "template": "system", "alpha": 0.0, "vocab": "full", "skip_first": 0,
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__},
        # an on-policy mini-batch's own error against the true gradient, sqrt(Var / ||E g||^2): the floor
        "on_policy": summary(on_policy) | {"relative_error": (spread / ref_norm2) ** 0.5},
        "reference_noise_relative": (ref_noise / ref_norm2) ** 0.5, "samplers": {}}

    # 2. each sampler, each weighting, on the same mini-batches
    for name in samplers:
        grads = {level: [] for level in LEVELS}
        weights, capped, log_ratio = [], [], []
        for b in range(args.batches):
            batch = sample(name)
            for level in LEVELS:
                g, student = gradient(batch, level)
                grads[level].append(g)
                if level == "token":
                    mask = student.mask.bool()
                    ratio = (student.sampled_logprobs - batch.sampler_logprobs)[mask]
                    log_ratio.append(ratio.abs().mean().item())
                    weights.append(student.is_weight[mask].mean().item())
                    capped.append((ratio.exp() > args.cap).float().mean().item())
            print(f"{name}: mini-batch {b + 1}/{args.batches}", flush=True)
        result["samplers"][name] = {
            "mean_abs_log_ratio": sum(log_ratio) / len(log_ratio), "mean_token_weight": sum(weights) / len(weights),
            "share_capped": sum(capped) / len(capped), **{level: summary(grads[level]) for level in LEVELS}}
        print(json.dumps({name: result["samplers"][name]}, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
