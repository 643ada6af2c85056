"""Tests for sdft_kit.losses against values computed by hand with plain `math`.

Expected numbers never come from the function under test or from torch's own KL: they are
written out as sums of p * log(p / q) over small distributions chosen here.
"""

from __future__ import annotations

import math

import pytest
import torch

from sdft_kit.losses import (
    divergence,
    log_probs,
    logprob_divergence,
    sequence_mean,
    sft_loss,
    skip_first,
    teacher_topk,
    to_buckets,
    token_divergence,
    topk_support,
)

# An asymmetric pair: KL(T || S) != KL(S || T), so a swapped direction is caught.
T = [0.8, 0.15, 0.05]
S = [0.2, 0.3, 0.5]


def kl_py(p: list[float], q: list[float]) -> float:
    """KL(p || q) by hand; terms with p == 0 contribute 0."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def mix(a: float, p: list[float], q: list[float]) -> list[float]:
    return [a * pi + (1 - a) * qi for pi, qi in zip(p, q)]


def logp(probs, dtype=torch.float64) -> torch.Tensor:
    """Log-probabilities (or logits: log_softmax of log p is log p) of the given probabilities."""
    return torch.log(torch.tensor(probs, dtype=dtype))


def approx(x: float):
    return pytest.approx(x, rel=1e-5, abs=1e-6)


# --- divergence ---------------------------------------------------------------------------------


def test_hand_kl_helper_is_right_on_a_written_out_case():
    # KL([.5,.25,.25] || [.25,.5,.25]) = .5 ln 2 + .25 ln .5 + .25 ln 1 = .25 ln 2
    assert kl_py([0.5, 0.25, 0.25], [0.25, 0.5, 0.25]) == pytest.approx(0.25 * math.log(2))
    # and the chosen pair really is asymmetric
    assert abs(kl_py(T, S) - kl_py(S, T)) > 0.1


def test_divergence_alpha0_is_forward_kl_teacher_student():
    # written out: .8 ln(.8/.2) + .15 ln(.15/.3) + .05 ln(.05/.5)
    expected = 0.8 * math.log(0.8 / 0.2) + 0.15 * math.log(0.15 / 0.3) + 0.05 * math.log(0.05 / 0.5)
    got = divergence(logp(S), logp(T), alpha=0.0)
    assert got.shape == ()
    assert float(got) == approx(expected)
    # would catch a swap: the reverse KL is a clearly different number
    assert abs(float(got) - kl_py(S, T)) > 0.1


def test_divergence_alpha1_is_reverse_kl_student_teacher():
    expected = 0.2 * math.log(0.2 / 0.8) + 0.3 * math.log(0.3 / 0.15) + 0.5 * math.log(0.5 / 0.05)
    got = float(divergence(logp(S), logp(T), alpha=1.0))
    assert got == approx(expected)
    assert abs(got - kl_py(T, S)) > 0.1


def test_divergence_alpha_half_is_jsd():
    m = mix(0.5, T, S)
    expected = 0.5 * kl_py(T, m) + 0.5 * kl_py(S, m)
    assert float(divergence(logp(S), logp(T), alpha=0.5)) == approx(expected)


def test_divergence_alpha_quarter_uses_mixture_quarter_teacher():
    a = 0.25
    m = mix(a, T, S)  # 0.25*T + 0.75*S, per the module doc
    expected = a * kl_py(T, m) + (1 - a) * kl_py(S, m)
    # the obvious wrong readings give different numbers, so this test discriminates them
    m_swapped = mix(1 - a, T, S)
    wrong_mixture = a * kl_py(T, m_swapped) + (1 - a) * kl_py(S, m_swapped)
    wrong_weights = (1 - a) * kl_py(T, m) + a * kl_py(S, m)
    assert abs(expected - wrong_mixture) > 1e-3 and abs(expected - wrong_weights) > 1e-3
    assert float(divergence(logp(S), logp(T), alpha=a)) == approx(expected)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_divergence_of_identical_distributions_is_zero(alpha):
    p = logp([0.6, 0.3, 0.1])
    assert float(divergence(p, p.clone(), alpha=alpha)) == pytest.approx(0.0, abs=1e-12)


def test_divergence_batched_positions_are_independent():
    # (B=2, C=1, V=3): each position gets its own KL
    student = torch.stack([logp(S), logp(T)]).unsqueeze(1)
    teacher = torch.stack([logp(T), logp(T)]).unsqueeze(1)
    got = divergence(student, teacher, alpha=0.0)
    assert got.shape == (2, 1)
    assert float(got[0, 0]) == approx(kl_py(T, S))
    assert float(got[1, 0]) == pytest.approx(0.0, abs=1e-12)


def test_forward_kl_with_zero_probability_teacher_entry_is_finite():
    teacher_p = [0.5, 0.5, 0.0]
    teacher = logp(teacher_p)
    assert torch.isneginf(teacher[2])
    expected = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.3)
    got = divergence(logp(S), teacher, alpha=0.0)
    assert torch.isfinite(got)
    assert float(got) == approx(expected)
    # the JSD stays finite too (the mixture has mass everywhere the student does)
    m = mix(0.5, teacher_p, S)
    jsd = divergence(logp(S), teacher, alpha=0.5)
    assert float(jsd) == approx(0.5 * kl_py(teacher_p, m) + 0.5 * kl_py(S, m))


def test_forward_kl_gradient_is_finite_with_zero_probability_teacher_entry():
    logits = logp(S).clone().requires_grad_(True)
    divergence(torch.log_softmax(logits, -1), logp([0.5, 0.5, 0.0]), alpha=0.0).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.tolist() == pytest.approx([0.2 - 0.5, 0.3 - 0.5, 0.5 - 0.0], abs=1e-9)


@pytest.mark.parametrize("alpha", [-0.01, 1.01, 2.0, -1.0])
def test_divergence_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match="alpha"):
        divergence(logp(S), logp(T), alpha=alpha)


# --- to_buckets ---------------------------------------------------------------------------------


def test_to_buckets_keeps_chosen_and_adds_tail():
    probs = [0.1, 0.45, 0.15, 0.3]
    got = to_buckets(logp(probs), torch.tensor([1, 3]))
    assert got.shape == (3,)
    assert got.tolist() == pytest.approx([math.log(0.45), math.log(0.3), math.log(1 - 0.45 - 0.3)], rel=1e-9)
    assert float(got.exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_to_buckets_batched_rows_sum_to_one():
    probs = [[[0.1, 0.45, 0.15, 0.3], [0.25, 0.25, 0.4, 0.1]]]  # (B=1, C=2, V=4)
    idx = torch.tensor([[[0], [2]]])  # one chosen token per position
    got = to_buckets(logp(probs), idx)
    assert got.shape == (1, 2, 2)
    assert got[0, 0].tolist() == pytest.approx([math.log(0.1), math.log(0.9)], rel=1e-9)
    assert got[0, 1].tolist() == pytest.approx([math.log(0.4), math.log(0.6)], rel=1e-9)
    assert got.exp().sum(-1)[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_bucketed_divergence_never_exceeds_full(alpha):
    g = torch.Generator().manual_seed(1234)
    student = torch.log_softmax(torch.randn(4, 5, 12, generator=g, dtype=torch.float64), -1)
    teacher = torch.log_softmax(2 * torch.randn(4, 5, 12, generator=g, dtype=torch.float64), -1)
    idx = torch.rand(4, 5, 12, generator=g).argsort(-1)[..., :3]  # 3 random distinct tokens per position
    full = divergence(student, teacher, alpha)
    bucketed = divergence(to_buckets(student, idx), to_buckets(teacher, idx), alpha)
    assert (bucketed <= full + 1e-12).all()
    assert (bucketed >= -1e-12).all()
    assert (bucketed < full - 1e-6).any()  # the bound is not trivially met by equality


# --- token_divergence ---------------------------------------------------------------------------


def test_token_divergence_full_vocab():
    # (B=1, C=2, V=3); student input is logits = log of chosen probabilities (+ a shift, which
    # log_softmax must remove)
    s_probs = [S, [0.25, 0.5, 0.25]]
    t_probs = [T, [0.5, 0.25, 0.25]]
    logits = (logp([s_probs], torch.float32) + 3.0)
    got = token_divergence(logits, logp([t_probs], torch.float32), torch.zeros(1, 2, dtype=torch.long))
    assert got.shape == (1, 2)
    assert got[0].tolist() == pytest.approx([kl_py(T, S), 0.25 * math.log(2)], rel=1e-5)


def test_token_divergence_full_vocab_reverse():
    logits = logp([[S]], torch.float32)
    got = token_divergence(logits, logp([[T]], torch.float32), torch.zeros(1, 1, dtype=torch.long), alpha=1.0)
    assert float(got[0, 0]) == approx(kl_py(S, T))


def test_token_divergence_topk_against_three_buckets_by_hand():
    t_full = [0.1, 0.4, 0.15, 0.35]  # top-2 = tokens 1, 3 -> buckets [.4, .35, tail .25]
    s_full = [0.05, 0.2, 0.65, 0.1]  # on the same tokens -> buckets [.2, .1, tail .7]
    t_buckets, idx = teacher_topk(logp([[t_full]], torch.float32), 2)
    assert idx.tolist() == [[[1, 3]]]
    assert t_buckets[0, 0].tolist() == pytest.approx([math.log(0.4), math.log(0.35), math.log(0.25)], rel=1e-5)
    got = token_divergence(logp([[s_full]], torch.float32), t_buckets, torch.zeros(1, 1, dtype=torch.long),
                           vocab="topk", teacher_indices=idx)
    expected = 0.4 * math.log(0.4 / 0.2) + 0.35 * math.log(0.35 / 0.1) + 0.25 * math.log(0.25 / 0.7)
    assert got.shape == (1, 1)
    assert float(got[0, 0]) == approx(expected)
    # and it is a different number from the full-vocabulary KL
    assert abs(expected - kl_py(t_full, s_full)) > 1e-2


def test_token_divergence_sampled_two_buckets_by_hand():
    # (B=1, C=2): sampled tokens 2 then 0
    t_full = [[0.1, 0.4, 0.15, 0.35], [0.6, 0.2, 0.1, 0.1]]
    s_full = [[0.3, 0.2, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]]
    ids = torch.tensor([[2, 0]])
    t_buckets = to_buckets(logp([t_full], torch.float32), ids.unsqueeze(-1))
    got = token_divergence(logp([s_full], torch.float32), t_buckets, ids, vocab="sampled")
    exp0 = 0.15 * math.log(0.15 / 0.4) + 0.85 * math.log(0.85 / 0.6)
    exp1 = 0.6 * math.log(0.6 / 0.25) + 0.4 * math.log(0.4 / 0.75)
    assert got.shape == (1, 2)
    assert got[0].tolist() == pytest.approx([exp0, exp1], rel=1e-5)


def test_token_divergence_rejects_unknown_vocab():
    with pytest.raises(ValueError, match="vocab"):
        token_divergence(logp([[S]]), logp([[T]]), torch.zeros(1, 1, dtype=torch.long), vocab="nope")


# --- gradient sanity ----------------------------------------------------------------------------


def test_forward_kl_gradient_wrt_student_logits_is_ps_minus_pt():
    # d/dz KL(T || softmax(z)) = softmax(z) - T
    t_probs = [[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]
    s_probs = [[[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]]
    logits = (logp(s_probs, torch.float32) + 1.5).requires_grad_(True)
    per_token = token_divergence(logits, logp(t_probs, torch.float32), torch.zeros(1, 2, dtype=torch.long))
    per_token[0, 1].backward()
    assert logits.grad[0, 1].tolist() == pytest.approx([0.6 - 0.1, 0.3 - 0.1, 0.1 - 0.8], abs=1e-6)
    assert logits.grad[0, 0].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-7)  # other position untouched


# --- skip_first ---------------------------------------------------------------------------------


def test_skip_first_masks_first_n_positions_without_modifying_input():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    before = mask.clone()
    out = skip_first(mask, 2)
    assert out.tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]
    assert torch.equal(mask, before)


def test_skip_first_zero_is_noop_and_longer_than_sequence_masks_all():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert skip_first(mask, 0).tolist() == [[1, 1, 0], [1, 1, 1]]
    assert skip_first(mask, 10).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]


# --- sequence_mean ------------------------------------------------------------------------------


def test_sequence_mean_is_mean_of_per_sequence_means_not_token_mean():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # per-sequence means 2 and 10 -> 6; the token mean would be 16/4 = 4
    assert float(sequence_mean(per_token, mask)) == pytest.approx(6.0)


def test_sequence_mean_ignores_huge_values_at_padding():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [10.0, 1e30, -1e30]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert float(sequence_mean(per_token, mask)) == pytest.approx(6.0)


def test_sequence_mean_leaves_out_fully_masked_sequences():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0], [5.0, 7.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # (2 + 10) / 2 = 6; counting the empty row as zero would give 4
    assert float(sequence_mean(per_token, mask)) == pytest.approx(6.0)


def test_sequence_mean_all_masked_is_zero_and_keeps_graph():
    per_token = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    out = sequence_mean(per_token, torch.zeros(2, 2, dtype=torch.long))
    assert out.item() == 0.0
    assert out.grad_fn is not None
    out.backward()
    assert per_token.grad.tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_sequence_mean_gradient_weights_each_sequence_equally():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    sequence_mean(per_token, mask).backward()
    # d/dx of 0.5 * (mean of 4) + 0.5 * (mean of 2)
    assert per_token.grad[0].tolist() == pytest.approx([0.125] * 4)
    assert per_token.grad[1].tolist() == pytest.approx([0.25, 0.25, 0.0, 0.0])


# --- sft_loss -----------------------------------------------------------------------------------


def test_sft_loss_is_mean_nll_per_sequence_then_batch():
    probs = [
        [[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
        [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9]],
    ]
    logits = logp(probs, torch.float32) - 2.0  # shift: cross-entropy must normalise
    labels = torch.tensor([[0, 1, 2], [1, 2, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])  # second sequence: one real token, two padding
    seq0 = (-math.log(0.5) - math.log(0.8) - math.log(0.6)) / 3
    seq1 = -math.log(0.2)
    loss, nll = sft_loss(logits, labels, mask)
    assert float(loss) == approx((seq0 + seq1) / 2)
    # the token mean would differ, so the reduction is really per sequence
    token_mean = (-math.log(0.5) - math.log(0.8) - math.log(0.6) - math.log(0.2)) / 4
    assert abs((seq0 + seq1) / 2 - token_mean) > 1e-2
    assert nll.shape == (2, 3)
    assert nll[0].tolist() == pytest.approx([-math.log(0.5), -math.log(0.8), -math.log(0.6)], rel=1e-5)
    assert float(nll[1, 0]) == approx(-math.log(0.2))


# --- temperature --------------------------------------------------------------------------------


def softmax_py(logits: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [z / temperature for z in logits]
    top = max(scaled)
    exps = [math.exp(z - top) for z in scaled]
    return [e / sum(exps) for e in exps]


def test_divergence_at_temperature_07_divides_both_logits_by_t():
    student_logits, teacher_logits = [2.0, 0.5, -1.0], [0.3, 1.8, -0.4]
    t = 0.7
    expected = kl_py(softmax_py(teacher_logits, t), softmax_py(student_logits, t))  # both at logits / 0.7
    ignored = kl_py(softmax_py(teacher_logits), softmax_py(student_logits))  # what a loss ignoring T computes
    assert abs(expected - ignored) > 0.05
    teacher = log_probs(torch.tensor([[teacher_logits]], dtype=torch.float64), t)
    got = token_divergence(torch.tensor([[student_logits]], dtype=torch.float64), teacher,
                           torch.zeros(1, 1, dtype=torch.long), temperature=t)
    assert float(got[0, 0]) == approx(expected)
    assert log_probs(torch.tensor(teacher_logits), t).exp().tolist() == pytest.approx(softmax_py(teacher_logits, t))


# --- kl_clip ------------------------------------------------------------------------------------


def test_kl_clip_caps_each_vocabulary_term_as_opsd_does():
    # terms of KL(T || S): .8 ln 4 = 1.109, .15 ln .5 = -.104, .05 ln .1 = -.115; only the first exceeds .05
    expected = 0.05 + 0.15 * math.log(0.15 / 0.3) + 0.05 * math.log(0.05 / 0.5)
    got = float(divergence(logp(S), logp(T), alpha=0.0, clip=0.05))
    assert got == approx(expected)
    assert float(divergence(logp(S), logp(T), alpha=0.0, clip=0.0)) == approx(kl_py(T, S))  # 0: no clip
    # JSD: each entry's mixed term a*t*log(t/m) + (1-a)*s*log(s/m) is capped
    m = mix(0.5, T, S)
    terms = [0.5 * t * math.log(t / mi) + 0.5 * s * math.log(s / mi) for t, s, mi in zip(T, S, m)]
    assert float(divergence(logp(S), logp(T), alpha=0.5, clip=0.02)) == approx(sum(min(x, 0.02) for x in terms))


def test_kl_clip_gives_no_gradient_through_capped_terms():
    logits = logp(S).clone().requires_grad_(True)
    divergence(torch.log_softmax(logits, -1), logp(T), alpha=0.0, clip=0.05).backward()
    # d/dz of sum over kept terms -t_v log s_v (v = 1, 2): s * (t_1 + t_2) - t_v on kept entries
    kept = 0.15 + 0.05
    assert logits.grad.tolist() == pytest.approx([0.2 * kept, 0.3 * kept - 0.15, 0.5 * kept - 0.05], abs=1e-9)


# --- top-k supports -----------------------------------------------------------------------------


def test_topk_student_support_renormalised_without_tail_like_trl():
    t_full = [0.1, 0.4, 0.15, 0.35]
    s_full = [0.05, 0.2, 0.65, 0.1]  # the student's top-2: tokens 2, 1
    sp, tp = [0.65, 0.2], [0.15, 0.4]
    expected = kl_py([x / sum(tp) for x in tp], [x / sum(sp) for x in sp])
    got = logprob_divergence(logp([[s_full]]), logp([[t_full]]), torch.zeros(1, 1, dtype=torch.long), vocab="topk",
                             topk=2, support="student", tail=False)
    assert float(got[0, 0]) == approx(expected)
    with_tail = logprob_divergence(logp([[s_full]]), logp([[t_full]]), torch.zeros(1, 1, dtype=torch.long),
                                   vocab="topk", topk=2, support="student", tail=True)
    assert float(with_tail[0, 0]) == approx(kl_py(tp + [1 - sum(tp)], sp + [1 - sum(sp)]))


def test_topk_union_support_counts_shared_tokens_once():
    t_full = [0.1, 0.4, 0.15, 0.35, 0.0]
    s_full = [0.05, 0.2, 0.55, 0.1, 0.1]
    # teacher top-2 {1, 3}, student top-2 {2, 1}: union {1, 2, 3} + tail {0, 4}
    tp = [t_full[1], t_full[3], t_full[2]]
    sp = [s_full[1], s_full[3], s_full[2]]
    expected = kl_py(tp + [1 - sum(tp)], sp + [1 - sum(sp)])
    indices, valid = topk_support(logp([[s_full]]), logp([[t_full]]), 2, "union")
    assert indices.tolist() == [[[1, 3, 2, 1]]] and valid.tolist() == [[[True, True, True, False]]]
    student = logp([[s_full]]).requires_grad_(True)
    got = logprob_divergence(student, logp([[t_full]]), torch.zeros(1, 1, dtype=torch.long), vocab="topk", topk=2,
                             support="union")
    assert float(got[0, 0].detach()) == approx(expected)
    got.sum().backward()
    assert torch.isfinite(student.grad).all()


def test_topk_teacher_support_can_renormalise_instead_of_a_tail():
    t_full, s_full = [0.1, 0.4, 0.15, 0.35], [0.05, 0.2, 0.65, 0.1]
    buckets, idx = teacher_topk(logp([[t_full]]), 2, tail=False)
    assert buckets.exp().sum().item() == pytest.approx(1.0)
    got = logprob_divergence(logp([[s_full]]), buckets, torch.zeros(1, 1, dtype=torch.long), vocab="topk",
                             teacher_indices=idx, tail=False)
    assert float(got[0, 0]) == approx(kl_py([0.4 / 0.75, 0.35 / 0.75], [0.2 / 0.3, 0.1 / 0.3]))
