"""Step 3, teacher scoring: log-probs of the student's tokens under teacher and student.

The teacher is a *view* of the one model in memory, never a second copy:
    base  the adapter disabled (the frozen starting model);
    ema   the adapter's weights swapped for their exponential moving average;
    live  the current student itself, without gradient.
Only the LoRA tensors are ever copied (for the EMA), a few MB at most.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import teacher_topk, to_buckets
from .rollout import Completions


def completion_logits(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, batch: Completions) -> torch.Tensor:
    """Logits predicting each completion token after the given prompt, (B, C, V).

    Positions come from the attention mask, as in generate, so a left-padded row
    is scored exactly as it was sampled; the LM head runs on the C needed positions only.
    """
    input_ids = torch.cat([prompt_ids, batch.completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, batch.completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    width = batch.completion_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=width + 1, use_cache=False)
    return out.logits[:, :-1]


def lora_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The trainable adapter tensors by name (the 'default' LoRA adapter)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class EMATeacher:
    """An exponential moving average of the adapter, swapped in for teacher passes."""

    def __init__(self, model, rate: float = 0.01):
        self.rate = rate
        self.shadow = {name: p.detach().clone() for name, p in lora_parameters(model).items()}

    @torch.no_grad()
    def update(self, model) -> None:
        for name, p in lora_parameters(model).items():
            self.shadow[name].lerp_(p.detach(), self.rate)  # shadow += rate * (p - shadow)

    @contextlib.contextmanager
    def swapped_in(self, model):
        params = lora_parameters(model)
        # Swap storage pointers both ways: no copy, and the optimizer keeps its params.
        for name, p in params.items():
            p.data, self.shadow[name] = self.shadow[name], p.data
        try:
            yield
        finally:
            for name, p in params.items():
                p.data, self.shadow[name] = self.shadow[name], p.data

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)


def teacher_view(model, kind: str, ema: EMATeacher | None = None):
    """Context in which the model computes as the teacher of the given kind."""
    if kind == "base":
        return model.disable_adapter()
    if kind == "ema":
        if ema is None:
            raise ValueError("teacher='ema' needs an EMATeacher")
        return ema.swapped_in(model)
    if kind == "live":
        return contextlib.nullcontext()
    raise ValueError(f"teacher must be 'base', 'ema' or 'live'; got {kind!r}")


@dataclass
class TeacherScores:
    logprobs: torch.Tensor  # what the loss compares against: (B,C,V) full, or (B,C,K+1) buckets
    indices: torch.Tensor | None  # the teacher's top-K ids for vocab='topk'
    sampled_logprobs: torch.Tensor  # log p_teacher(sampled token), (B, C)
    top_ids: torch.Tensor  # the teacher's top record_k tokens, (B, C, record_k), for records/views
    top_logprobs: torch.Tensor


@torch.no_grad()
def score_teacher(model, teacher_prompt_ids: torch.Tensor, teacher_prompt_mask: torch.Tensor, batch: Completions,
                  *, kind: str = "ema", ema: EMATeacher | None = None, vocab: str = "full", topk: int = 100,
                  record_k: int = 5) -> TeacherScores:
    """Teacher log-probs at every completion position, reduced to what the loss needs.

    The full (B, C, V) tensor lives only inside this function unless vocab='full'.
    """
    was_training = model.training
    model.eval()
    with teacher_view(model, kind, ema):
        logits = completion_logits(model, teacher_prompt_ids, teacher_prompt_mask, batch)
    model.train(was_training)
    logprobs = F.log_softmax(logits.float(), dim=-1)
    del logits
    sampled = logprobs.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    top = logprobs.topk(record_k, dim=-1)
    indices = None
    if vocab == "topk":
        logprobs, indices = teacher_topk(logprobs, topk)
    elif vocab == "sampled":
        logprobs = to_buckets(logprobs, batch.completion_ids.unsqueeze(-1))
    return TeacherScores(logprobs, indices, sampled, top.indices, top.values)
