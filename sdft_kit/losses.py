"""The update step's math: per-token divergences, token masks and reductions.

Pure tensor functions, no model. Shapes: B sequences, C completion positions, V
vocabulary entries (or the K (+1 tail) buckets of a top-k support, see `to_buckets`).

Divergence convention (shared by the paper's code and TRL): with M = a*T + (1-a)*S,
    a = 0   forward KL   KL(T || S)      what the paper's reported results used
    a = 1   reverse KL   KL(S || T)
    0<a<1   generalised JSD: a*KL(T || M) + (1-a)*KL(S || M)
Both distributions come from logits / temperature (`log_probs`), as in the official code and TRL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) in float32: the distribution the loss compares at a sampling temperature."""
    logits = logits.float()
    return F.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def kl_terms(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """The pointwise terms p * log(p / q) of KL(p || q), one per vocabulary entry; inputs are log-probabilities."""
    # xlogy-style guard: terms with p == 0 contribute 0 even where q is -inf.
    p = p_logprobs.exp()
    return p * torch.where(p > 0, p_logprobs - q_logprobs, torch.zeros_like(p))


def kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension; inputs are log-probabilities."""
    return kl_terms(p_logprobs, q_logprobs).sum(-1)


def divergence(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, alpha: float,
               clip: float = 0.0) -> torch.Tensor:
    """Per-position divergence between teacher and student distributions (see module doc).

    clip > 0 caps every pointwise term of the sum (each vocabulary entry's a*t*log(t/m) + (1-a)*s*log(s/m))
    at `clip` before summing, as OPSD's code clamps its unreduced JSD (`jsd.clamp(max=token_clip)`): a term
    above the cap adds only the cap and no gradient, so a few tokens far from the teacher cannot dominate.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        terms = kl_terms(teacher_logprobs, student_logprobs)
    elif alpha == 1.0:
        terms = kl_terms(student_logprobs, teacher_logprobs)
    else:
        mixture = torch.logsumexp(
            torch.stack([teacher_logprobs + math.log(alpha), student_logprobs + math.log(1 - alpha)]), dim=0
        )
        terms = alpha * kl_terms(teacher_logprobs, mixture) + (1 - alpha) * kl_terms(student_logprobs, mixture)
    if clip > 0:
        terms = terms.clamp(max=clip)
    return terms.sum(-1)


def to_buckets(logprobs: torch.Tensor, indices: torch.Tensor, *, tail: bool = True,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce full-vocabulary log-probs to the K chosen tokens `indices`, plus one tail bucket.

    tail=True: the tail holds the remaining mass log(1 - sum p_k), so each row is still a
    distribution and the divergence on buckets never exceeds the full one. tail=False: the K
    are renormalised to sum to 1 (TRL's default, `distillation_add_tail=False`).
    valid: (..., K), False for chosen entries to leave out (probability 0), e.g. the repeats of a union.
    """
    chosen = logprobs.gather(-1, indices)
    if valid is not None:
        chosen = chosen.masked_fill(~valid, -math.inf)
    if not tail:
        return chosen - torch.logsumexp(chosen, dim=-1, keepdim=True)
    # log(1 - sum p) computed as log(-expm1(logsumexp(chosen))) for accuracy near 1.
    covered = torch.logsumexp(chosen, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.cat([chosen, torch.log(-torch.expm1(covered))], dim=-1)


def topk_support(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, k: int,
                 support: str = "teacher") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The token ids a top-k loss compares the two distributions on, per position, and which of them count.

    support: 'teacher' (its top-k: sdft-kit's, and TRL's with a teacher server), 'student' (TRL's default)
    or 'union' (both sets: 2K ids, a student id the teacher also chose marked not valid so it counts once).
    Returns (indices (..., K or 2K), valid (..., 2K) for 'union', else None). No gradient flows into the choice.
    """
    if support == "teacher":
        return teacher_logprobs.topk(k, dim=-1).indices, None
    student_top = student_logprobs.detach().topk(k, dim=-1).indices
    if support == "student":
        return student_top, None
    if support == "union":
        teacher_top = teacher_logprobs.topk(k, dim=-1).indices
        repeated = (student_top.unsqueeze(-1) == teacher_top.unsqueeze(-2)).any(-1)
        return torch.cat([teacher_top, student_top], -1), torch.cat([torch.ones_like(repeated), ~repeated], -1)
    raise ValueError(f"topk support must be 'teacher', 'student' or 'union', got {support!r}")


def token_divergence(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, completion_ids: torch.Tensor,
                     temperature: float = 1.0, **options) -> torch.Tensor:
    """`logprob_divergence` from the student's logits at `temperature` (options: see logprob_divergence)."""
    return logprob_divergence(log_probs(student_logits, temperature), teacher_logprobs, completion_ids, **options)


def logprob_divergence(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    completion_ids: torch.Tensor,
    *,
    alpha: float = 0.0,
    vocab: str = "full",
    teacher_indices: torch.Tensor | None = None,
    topk: int = 100,
    support: str = "teacher",
    tail: bool = True,
    clip: float = 0.0,
) -> torch.Tensor:
    """Divergence at every completion position, shape (B, C), from the student's log-probs (B, C, V).

    vocab="full": teacher_logprobs is (B, C, V).
    vocab="topk": either the teacher's buckets over its own top-K `teacher_indices` (B, C, K),
        as made by `teacher_topk`, or (teacher_indices None) the teacher's full (B, C, V), and the
        support ('teacher', 'student' or 'union', see `topk_support`) is chosen here. tail: see `to_buckets`.
    vocab="sampled": the two buckets {sampled token, rest}; teacher_logprobs is
        (B, C, 2) as made by `to_buckets(teacher_full, completion_ids[..., None])`.
    clip: cap on each pointwise term of the divergence (see `divergence`); 0 = none.
    """
    if vocab == "full":
        return divergence(student_logprobs, teacher_logprobs, alpha, clip)
    if vocab == "topk":
        if teacher_indices is not None:
            return divergence(to_buckets(student_logprobs, teacher_indices, tail=tail), teacher_logprobs, alpha, clip)
        indices, valid = topk_support(student_logprobs, teacher_logprobs, topk, support)
        return divergence(to_buckets(student_logprobs, indices, tail=tail, valid=valid),
                          to_buckets(teacher_logprobs, indices, tail=tail, valid=valid), alpha, clip)
    if vocab == "sampled":
        return divergence(to_buckets(student_logprobs, completion_ids.unsqueeze(-1)), teacher_logprobs, alpha, clip)
    raise ValueError(f"vocab must be 'full', 'topk' or 'sampled', got {vocab!r}")


def teacher_topk(teacher_logprobs: torch.Tensor, k: int, *, tail: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher's top-k token ids and their buckets (top-k plus tail, or renormalised: see `to_buckets`)."""
    indices = teacher_logprobs.topk(k, dim=-1).indices
    return to_buckets(teacher_logprobs, indices, tail=tail), indices


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
