"""The student the loss benchmarks (is_level.py, loss_options.py) measure on: the embedded model with its LoRA
adapter set off its zero start at random (seeded), so that A and B both get gradients and the base teacher
differs from it. One torch thread; the model is in eval mode (no dropout: a gradient is the loss's own)."""

from __future__ import annotations

import torch


def perturbed_student(seed: int, perturb: float):
    """(model, tokenizer, LoRA parameters): the embedded model with LoRA r16, each factor moved by N(0, perturb²)."""
    from sdft_kit import add_lora, load_model
    from sdft_kit.models import lora_parameters

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    base, tokenizer = load_model("embedded")
    model = add_lora(base, seed=seed)
    lora = list(lora_parameters(model).values())
    with torch.no_grad():
        for p in lora:
            p.add_(torch.randn_like(p) * perturb)
    model.eval()
    return model, tokenizer, lora
