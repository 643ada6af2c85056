"""Step 3, teacher scoring: the teacher's log-probs of the student's tokens.

The teacher (see teachers.py) reads each completion after its own prompt, the one with
the demonstrations, which the batch carries as `teacher_prompt_ids`. What it returns is
already reduced to what the loss compares against (full vocabulary, its own top-k buckets, or
the sampled token + rest), plus the sampled token's log-prob and a top-k for the step records.
Its distribution is at the rollout's temperature (logits / T), like the student's in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch import Completions, completion_logits
from .config import LossConfig
from .losses import log_probs, teacher_topk, to_buckets
from .models import eval_mode
from .teachers import Teacher


@dataclass
class TeacherScores:
    logprobs: torch.Tensor  # what the loss compares against: (B,C,V) full, or (B,C,K+1) buckets
    indices: torch.Tensor | None  # the teacher's top-K ids for vocab='topk' with topk_support 'teacher'
    sampled_logprobs: torch.Tensor  # log p_teacher(sampled token), (B, C)
    top_ids: torch.Tensor  # the teacher's top record_k tokens, (B, C, record_k), for records/views
    top_logprobs: torch.Tensor


@torch.no_grad()
def score_teacher(teacher: Teacher, batch: Completions, config: LossConfig | None = None, *,
                  record_k: int = 5) -> TeacherScores:
    """Teacher log-probs at every completion position of `batch`, after its teacher prompts.

    config: the loss settings that say what to keep (vocab, topk, topk_support, topk_tail). The full
    (B, C, V) tensor lives only inside this function unless vocab='full', or 'topk' on the student's
    or the union support (which needs the teacher at the student's top-k tokens).
    """
    config = config or LossConfig()
    if batch.teacher_prompt_ids is None:
        raise ValueError("the batch has no teacher prompts: add them with batch.with_teacher_prompts(...)")
    with teacher.view() as model, eval_mode(model):
        logits = completion_logits(model, batch.teacher_prompt_ids, batch.teacher_prompt_mask, batch)
    logprobs = log_probs(logits, batch.temperature)
    del logits
    sampled = logprobs.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    top = logprobs.topk(record_k, dim=-1)
    indices = None
    if config.vocab == "topk" and config.topk_support == "teacher":
        logprobs, indices = teacher_topk(logprobs, config.topk, tail=config.topk_tail)
    elif config.vocab == "sampled":
        logprobs = to_buckets(logprobs, batch.completion_ids.unsqueeze(-1))
    return TeacherScores(logprobs, indices, sampled, top.indices, top.values)
