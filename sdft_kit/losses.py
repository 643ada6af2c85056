"""The update step's math: per-token divergences, token masks and reductions.

Pure tensor functions, no model. Shapes: B sequences, C completion positions, V
vocabulary entries (or K+1 buckets after `to_buckets`).

Divergence convention (shared by the paper's code and TRL): with M = a*T + (1-a)*S,
    a = 0   forward KL   KL(T || S)      what the paper's reported results used
    a = 1   reverse KL   KL(S || T)
    0<a<1   generalised JSD: a*KL(T || M) + (1-a)*KL(S || M)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension; inputs are log-probabilities."""
    # xlogy-style guard: terms with p == 0 contribute 0 even where q is -inf.
    p = p_logprobs.exp()
    diff = torch.where(p > 0, p_logprobs - q_logprobs, torch.zeros_like(p))
    return (p * diff).sum(-1)


def divergence(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-position divergence between teacher and student distributions (see module doc)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        return kl(teacher_logprobs, student_logprobs)
    if alpha == 1.0:
        return kl(student_logprobs, teacher_logprobs)
    mixture = torch.logsumexp(
        torch.stack([teacher_logprobs + math.log(alpha), student_logprobs + math.log(1 - alpha)]), dim=0
    )
    return alpha * kl(teacher_logprobs, mixture) + (1 - alpha) * kl(student_logprobs, mixture)


def to_buckets(logprobs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Reduce full-vocabulary log-probs to K chosen tokens plus one tail bucket.

    The tail holds the remaining mass log(1 - sum p_k), so each row is still a
    distribution and the divergence on buckets never exceeds the full one.
    """
    chosen = logprobs.gather(-1, indices)
    # log(1 - sum p) computed as log(-expm1(logsumexp(chosen))) for accuracy near 1.
    covered = torch.logsumexp(chosen, dim=-1, keepdim=True).clamp(max=-1e-7)
    tail = torch.log(-torch.expm1(covered))
    return torch.cat([chosen, tail], dim=-1)


def token_divergence(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, completion_ids: torch.Tensor,
                     **options) -> torch.Tensor:
    """`logprob_divergence` from the student's logits (options: alpha, vocab, teacher_indices)."""
    return logprob_divergence(F.log_softmax(student_logits.float(), dim=-1), teacher_logprobs, completion_ids,
                              **options)


def logprob_divergence(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    completion_ids: torch.Tensor,
    *,
    alpha: float = 0.0,
    vocab: str = "full",
    teacher_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Divergence at every completion position, shape (B, C), from the student's log-probs (B, C, V).

    vocab="full": teacher_logprobs is (B, C, V).
    vocab="topk": teacher_logprobs is the teacher's K+1 buckets (B, C, K+1) over its
        top-K tokens `teacher_indices` (B, C, K), as made by `teacher_topk`.
    vocab="sampled": the two buckets {sampled token, rest}; teacher_logprobs is
        (B, C, 2) as made by `to_buckets(teacher_full, completion_ids[..., None])`.
    """
    if vocab == "full":
        return divergence(student_logprobs, teacher_logprobs, alpha)
    if vocab == "topk":
        return divergence(to_buckets(student_logprobs, teacher_indices), teacher_logprobs, alpha)
    if vocab == "sampled":
        return divergence(to_buckets(student_logprobs, completion_ids.unsqueeze(-1)), teacher_logprobs, alpha)
    raise ValueError(f"vocab must be 'full', 'topk' or 'sampled', got {vocab!r}")


def teacher_topk(teacher_logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher's top-k token ids and their K+1 buckets (top-k plus tail)."""
    indices = teacher_logprobs.topk(k, dim=-1).indices
    return to_buckets(teacher_logprobs, indices), indices


def skip_first(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Drop the first n completion positions from the loss (against template leaks)."""
    if n <= 0:
        return mask
    out = mask.clone()
    out[:, :n] = 0
    return out


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's masked tokens, then over sequences that have any.

    Sequences with no token left (e.g. shorter than the skip) are left out rather
    than counted as zero, so they neither dilute nor NaN the batch loss.
    """
    mask = mask.to(per_token.dtype)
    counts = mask.sum(-1)
    has_tokens = counts > 0
    if not has_tokens.any():
        return (per_token * mask).sum() * 0.0  # keeps the graph; nothing to learn here
    per_sequence = (per_token * mask).sum(-1) / counts.clamp(min=1)
    return per_sequence[has_tokens].mean()


def chunk_shares(mask: torch.Tensor, size: int) -> list[tuple[slice, float]]:
    """Row chunks of at most `size` rows (0: one chunk) and each one's share of `sequence_mean`.

    `sequence_mean` averages over the sequences that have a token in `mask`, so a chunk's
    mean weighted by its share of those sequences sums to the whole batch's mean: the
    chunks' losses and gradients add up to exactly the whole batch's.
    """
    counted = mask.sum(-1) > 0
    total = max(int(counted.sum()), 1)
    rows = mask.shape[0]
    size = size or rows
    return [(slice(lo, lo + size), int(counted[lo:lo + size].sum()) / total) for lo in range(0, rows, size)]


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the demonstration tokens: (loss, per-token NLL (B, C)).

    Reduced like the distillation loss (mean per sequence, then over the batch) so
    the two methods' losses and step sizes are comparable.
    """
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
    return sequence_mean(nll, mask), nll
