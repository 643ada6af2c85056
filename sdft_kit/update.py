"""Step 4, update: the student's loss on its own tokens, and the optimizer step.

Two objectives with one signature, `objective(model, teacher, batch, config) -> Objective`:
    sdft_objective  the teacher scores the completion (step 3); the student's per-token
                    distribution is pulled towards the teacher's (`distill_loss`);
    sft_objective   cross-entropy of the demonstration, the baseline (`demonstration_loss`).
Both work on the same `Completions` layout and return the loss with what the step records
need, so the trainer, the records and the views treat both methods alike.
Adding an objective: a function with that signature, in the entry of its method (methods.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import get_cosine_schedule_with_warmup

from .batch import Completions, completion_logits
from .config import Config, LossConfig, TrainConfig
from .losses import log_probs, logprob_divergence, sequence_mean, sft_loss, skip_first
from .models import lora_parameters
from .scoring import TeacherScores, score_teacher
from .teachers import Teacher


@dataclass
class StudentScores:
    loss: torch.Tensor  # scalar, with gradient
    per_token: torch.Tensor  # (B, C) divergence (SDFT) or NLL (SFT), detached
    mask: torch.Tensor  # (B, C) the tokens the loss counts
    sampled_logprobs: torch.Tensor  # log p_student(token), (B, C), detached
    top_ids: torch.Tensor  # (B, C, record_k)
    top_logprobs: torch.Tensor
    is_weight: torch.Tensor | None = None  # (B, C) importance weights, for rollouts from other weights


@dataclass
class Objective:
    """One objective's result on a batch: the student's loss and scores, the teacher's (SDFT), and timings."""

    student: StudentScores
    teacher: TeacherScores | None
    seconds: dict[str, float] = field(default_factory=dict)  # 'teacher' and 'student' passes


def _student_view(logprobs: torch.Tensor, batch: Completions, record_k: int):
    """The sampled token's log-prob and the top-k, for the step records (no gradient)."""
    logprobs = logprobs.detach()
    with torch.no_grad():
        sampled = logprobs.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
        top = logprobs.topk(record_k, dim=-1)
    return sampled, top.indices, top.values


def importance_weights(student_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float,
                       level: str = "sequence", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Truncated importance sampling for a rollout sampled from other weights (vllm), (B, C), no gradient.

    Each token's ratio min(p_student(token) / q_sampler(token), cap) reweights the loss towards what the
    student itself would have sampled. level 'token' weights each token by its own ratio; 'sequence'
    gives every token of a row the mean of its capped ratios over the loss tokens `mask`, as the
    official code does (distil_trainer.py: ratio clamped per token, then averaged over the loss mask).
    """
    ratio = (student_logprobs.detach() - sampler_logprobs).exp().clamp(max=cap)
    if level == "token":
        return ratio
    if level == "sequence":
        mask = torch.ones_like(ratio) if mask is None else mask.to(ratio.dtype)
        per_row = (ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        return per_row.expand_as(ratio)
    raise ValueError(f"is_level must be 'token' or 'sequence', got {level!r}")


def distill_loss(model, batch: Completions, teacher: TeacherScores, config: LossConfig | None = None,
                 record_k: int = 5) -> StudentScores:
    """Per-token divergence to the teacher, mean per sequence, then over the batch.

    Both distributions are at the rollout's temperature (logits / T, as `score_teacher`). When the
    rollout came from other weights (`batch.sampler_logprobs`, at that temperature too), the
    divergence is weighted by `importance_weights` before the mean.
    """
    config = config or LossConfig()
    logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    logprobs = log_probs(logits, batch.temperature)  # once: for the loss and for the records
    per_token = logprob_divergence(logprobs, teacher.logprobs, batch.completion_ids, alpha=config.alpha,
                                   vocab=config.vocab, teacher_indices=teacher.indices, topk=config.topk,
                                   support=config.topk_support, tail=config.topk_tail, clip=config.kl_clip)
    mask = skip_first(batch.completion_mask, config.skip_first)
    view = _student_view(logprobs, batch, record_k)
    weight = None
    if batch.sampler_logprobs is not None:
        weight = importance_weights(view[0], batch.sampler_logprobs, config.is_cap, config.is_level, mask)
    loss = sequence_mean(per_token if weight is None else per_token * weight, mask)
    return StudentScores(loss, per_token.detach(), mask, *view, is_weight=weight)


def demonstration_loss(model, batch: Completions, record_k: int = 5) -> StudentScores:
    """SFT: cross-entropy of the demonstration tokens given the student prompt."""
    logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    mask = batch.completion_mask  # every demonstration token
    loss, nll = sft_loss(logits, batch.completion_ids, mask)
    with torch.no_grad():
        logprobs = F.log_softmax(logits.float(), dim=-1)
    return StudentScores(loss, nll.detach(), mask, *_student_view(logprobs, batch, record_k))


def sdft_objective(model, teacher: Teacher, batch: Completions, config: Config) -> Objective:
    """SDFT: the teacher scores the student's own completion, then the student's distill loss."""
    start = time.perf_counter()
    scores = score_teacher(teacher, batch, config.loss, record_k=config.train.record_topk)
    middle = time.perf_counter()
    student = distill_loss(model, batch, scores, config.loss, config.train.record_topk)
    return Objective(student, scores, {"teacher": middle - start, "student": time.perf_counter() - middle})


def sft_objective(model, teacher: Teacher | None, batch: Completions, config: Config) -> Objective:
    """SFT: the demonstration's cross-entropy; the teacher is not used."""
    start = time.perf_counter()
    student = demonstration_loss(model, batch, config.train.record_topk)
    return Objective(student, None, {"teacher": 0.0, "student": time.perf_counter() - start})


def make_optimizer(model, config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW on the adapter, with linear warm-up then cosine decay over `steps`."""
    params = list(lora_parameters(model).values())
    if not params:
        raise ValueError("the model has no trainable parameters: wrap it with add_lora() first")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = int(config.warmup_ratio * config.steps)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, config.steps)


def optimizer_step(model, optimizer, scheduler, max_grad_norm: float = 1.0) -> float:
    """Clip, step, schedule, zero; returns the gradient norm before clipping.

    A non-finite norm (inf or NaN gradients) skips the step: the gradients are dropped, nothing changes."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(list(lora_parameters(model).values()), max_grad_norm))
    if math.isfinite(grad_norm):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
