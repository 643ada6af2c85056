"""What the 2026 follow-ups' loss options do to the gradient, on rollouts of the embedded model.

    python benchmarks/loss_options.py

One batch of rollouts (4 sample prompts x 2 samples, 32 new tokens, temperature 1) from the
embedded model with a LoRA adapter (r16) set off its zero start at random (seeded, so student
and teacher differ as after some training); the teacher is the base with the demonstration
(template 'system'). For each loss setting, with the training code's own pieces (score_teacher,
distill_loss): the loss, the cosine of its LoRA gradient to the paper's objective's (forward KL
over the full vocabulary, no clip), and what the option touches:
    kl_clip 0.05 (OPSD)         share of vocabulary terms capped, share of tokens with a capped term
    topk_support, k 20 / 100    the teacher's probability mass inside the support (mean over tokens)
Writes JSON (default benchmarks/results/loss_options.json). 1 torch thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "loss_options.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--perturb", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from perturbed_student import perturbed_student
    from sdft_kit import SAMPLE_DATA, load_examples
    from sdft_kit.batch import completion_logits
    from sdft_kit.config import LossConfig, RolloutConfig, TeacherConfig
    from sdft_kit.demos import student_prompt, teacher_prompt
    from sdft_kit.losses import kl_terms, log_probs, topk_support
    from sdft_kit.rollout import rollout
    from sdft_kit.scoring import score_teacher
    from sdft_kit.teachers import make_teacher
    from sdft_kit.update import distill_loss, loss_mask

    model, tokenizer, lora = perturbed_student(args.seed, args.perturb)
    examples = load_examples(SAMPLE_DATA)[:4]
    batch = rollout(model, tokenizer, [student_prompt(tokenizer, ex) for ex in examples for _ in range(2)],
                    RolloutConfig(max_new_tokens=args.max_new_tokens))
    batch = batch.with_teacher_prompts(tokenizer, [teacher_prompt(tokenizer, ex, [ex.demonstration], "system")
                                                   for ex in examples for _ in range(2)])
    teacher = make_teacher(model, TeacherConfig(teacher="base"))
    paper = LossConfig(skip_first=0)
    mask = loss_mask(batch, "sdft", paper).bool()

    def run(config: LossConfig) -> tuple[float, torch.Tensor]:
        loss = distill_loss(model, batch, score_teacher(teacher, batch, config), config).loss
        loss.backward()
        grad = torch.cat([p.grad.flatten().double() for p in lora])
        model.zero_grad(set_to_none=True)
        return loss.item(), grad

    settings = {"paper (forward KL, full)": paper, "kl_clip 0.05": dataclasses.replace(paper, kl_clip=0.05)}
    for k in (20, 100):
        for support in ("teacher", "student", "union"):
            settings[f"top-{k} {support} + tail"] = dataclasses.replace(paper, vocab="topk", topk=k,
                                                                          topk_support=support)
    settings["top-100 student, renormalised (TRL's vocabulary)"] = dataclasses.replace(
        paper, vocab="topk", topk=100, topk_support="student", topk_tail=False)
    results, reference = {}, None
    for name, config in settings.items():
        loss, grad = run(config)
        reference = grad if reference is None else reference
        results[name] = {"loss": loss, "grad_norm": float(grad.norm()),
                         "cosine_to_paper": float(grad @ reference / (grad.norm() * reference.norm()))}
        print(name, json.dumps(results[name]), flush=True)

    # what the options touch, from the two full distributions
    with torch.no_grad():
        student = log_probs(completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch))
        full = score_teacher(teacher, batch, paper).logprobs
    terms = kl_terms(full, student)[mask]
    capped = terms > 0.05
    touched = {"kl_clip 0.05": {"share_of_terms_capped": float(capped.float().mean()),
                                "share_of_tokens_with_a_capped_term": float(capped.any(-1).float().mean()),
                                "mean_token_kl": float(terms.sum(-1).mean())}}
    for k in (20, 100):
        for support in ("teacher", "student", "union"):
            indices, valid = topk_support(student, full, k, support)
            mass = full.exp().gather(-1, indices)
            if valid is not None:
                mass = mass * valid
            touched[f"top-{k} {support}"] = {"teacher_mass_inside": float(mass.sum(-1)[mask].mean()),
                                             "tokens_in_support": float(k if valid is None else
                                                                        valid.sum(-1)[mask].float().mean())}
    result = {"command": "python " + " ".join(sys.argv),
              "settings": vars(args) | {"rollouts": int(batch.completion_ids.shape[0]), "tokens": int(mask.sum()),
                                        "template": "system", "threads": torch.get_num_threads(),
                                        "python": platform.python_version(), "torch": torch.__version__},
              "objectives": results, "touched": touched}
    print(json.dumps(touched, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
