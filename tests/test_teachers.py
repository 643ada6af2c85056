"""Tests for sdft_kit.teachers: the weight EMA against its closed form, its low-rank truncation against the
SVD, its view against a model with the averaged weights merged in, its state, and the anchor."""

from __future__ import annotations

import pytest
import torch

from sdft_kit import Config, Trainer, add_lora, load_model
from sdft_kit.batch import completion_logits, demonstration_batch
from sdft_kit.config import ModelConfig, TeacherConfig
from sdft_kit.demos import student_prompt
from sdft_kit.models import lora_parameters
from sdft_kit.teachers import (DenseDelta, FactorEMATeacher, LowRankDelta, WeightEMATeacher, lora_layers,
                               make_teacher, student_delta)


def _delta(layer) -> torch.Tensor:
    left, right = student_delta(layer)
    return left @ right


def _relative(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).pow(2).sum()) for n in b)
    return (num / sum(float(b[n].pow(2).sum()) for n in b)) ** 0.5


# --- the low-rank delta, on plain tensors ---------------------------------------------------------------------


def test_low_rank_update_is_the_best_rank_k_approximation_of_the_exact_update():
    g = torch.Generator().manual_seed(0)
    left, right = torch.randn(40, 3, generator=g), torch.randn(3, 30, generator=g)
    low, dense = LowRankDelta(left, right, rank=6), DenseDelta(left, right)
    for step in range(4):  # rank grows by 3 a step: exact for two steps, then truncated
        left, right = torch.randn(40, 3, generator=g), torch.randn(3, 30, generator=g)
        exact = 0.7 * low.full() + 0.3 * left @ right  # what this update must approximate
        low.update(left, right, rate=0.3, keep=1.0)
        dense.update(left, right, rate=0.3, keep=1.0)
        u, s, vh = torch.linalg.svd(exact)
        best = u[:, :6] * s[:6] @ vh[:6]
        torch.testing.assert_close(low.full(), best, rtol=1e-4, atol=1e-4)
        if step < 1:  # rank 3 + 3 = 6 after the first update: nothing is cut yet
            torch.testing.assert_close(low.full(), dense.full(), rtol=1e-4, atol=1e-4)
    assert float((low.full() - dense.full()).norm() / dense.full().norm()) > 1e-3  # later, truncation shows
    torch.testing.assert_close(low.V @ low.V.T, torch.eye(6), rtol=0, atol=1e-5)  # orthonormal rows


def test_low_rank_below_the_lora_rank_is_refused():
    with pytest.raises(ValueError, match="at least the LoRA rank"):
        LowRankDelta(torch.zeros(4, 3), torch.zeros(3, 5), rank=2)


# --- the weight EMA on the embedded model ---------------------------------------------------------------------


@pytest.fixture
def small_lora(model_and_tokenizer, one_thread):
    model, tokenizer = model_and_tokenizer
    return add_lora(model, ModelConfig(lora_r=2, lora_alpha=4), seed=0), tokenizer


def test_weight_ema_teacher_equals_its_closed_form_after_k_steps(small_lora, demo_examples):
    """teacher delta after k steps = sum_i rate (1 - rate)^(k - i) s B_i A_i (the adapter starts at B = 0), and with
    an anchor each term also shrinks by (1 - anchor) per step since it entered; the factor EMA is not it."""
    model, tokenizer = small_lora
    rate, anchor, steps = 0.5, 0.2, 3
    config = Config().replace(steps=steps, batch_size=1, max_new_tokens=6, teacher="ema", ema_rate=rate, ema_rank=0,
                              learning_rate=2e-2, warmup_ratio=0.0, skip_first=0, threads=1)
    trainer = Trainer(config, demo_examples[:2], model=model, tokenizer=tokenizer)
    def ema(**fields) -> TeacherConfig:
        return TeacherConfig(teacher="ema", ema_rate=rate, **fields)

    others = {"rank 3": make_teacher(model, ema(ema_rank=steps)),  # rank 3 x r holds 3 steps' updates exactly
              "rank 1": make_teacher(model, ema(ema_rank=1)),
              "anchored": make_teacher(model, ema(ema_rank=steps, anchor=anchor)),
              "factor": make_teacher(model, TeacherConfig(teacher="factor_ema", ema_rate=rate))}
    layers = dict(list(lora_layers(model).items())[::15])  # 14 of the 210 layers, from first to last, are compared
    history = []
    for _ in trainer.steps():
        for teacher in others.values():
            teacher.after_step()
        history.append({name: _delta(layer) for name, layer in layers.items()})
    k = len(history)

    def closed_form(keep: float) -> dict:
        return {name: sum(keep ** (k - i) * rate * (1 - rate) ** (k - 1 - i) * history[i][name] for i in range(k))
                for name in layers}

    exact, anchored = closed_form(1.0), closed_form(1 - anchor)
    def full(teacher) -> dict:
        return {name: teacher.deltas[name].full() for name in layers}

    assert _relative(full(trainer.teacher), exact) < 1e-5
    assert _relative(full(others["rank 3"]), exact) < 1e-4
    assert _relative(full(others["anchored"]), anchored) < 1e-4
    assert 1e-3 < _relative(full(others["rank 1"]), exact) < 0.5
    factor = {name: layer.scaling["default"] * others["factor"].shadow[name + ".lora_B.default.weight"]
              @ others["factor"].shadow[name + ".lora_A.default.weight"] for name, layer in layers.items()}
    assert _relative(factor, exact) > 0.05  # EMA(B) EMA(A) is another teacher
    assert _relative(history[-1], exact) > 0.1  # and the teacher is not the student


def test_ema_view_computes_like_the_base_with_the_averaged_weights_merged(small_lora, demo_examples):
    model, tokenizer = small_lora
    teacher = make_teacher(model, TeacherConfig(teacher="ema", ema_rate=0.5, ema_rank=2))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.05)
    teacher.after_step()
    batch = demonstration_batch(tokenizer, [student_prompt(tokenizer, ex) for ex in demo_examples[:2]],
                                [ex.demonstration for ex in demo_examples[:2]], torch.device("cpu"))
    with torch.no_grad(), teacher.view() as view:
        got = completion_logits(view, batch.prompt_ids, batch.prompt_mask, batch)
    merged, _ = load_model("embedded")
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for name, delta in teacher.deltas.items():
            modules[name.removeprefix("base_model.model.")].weight.add_(delta.full())
        expected = completion_logits(merged, batch.prompt_ids, batch.prompt_mask, batch)
        student = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
        with model.disable_adapter():
            base = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-3)
    assert (got - base).abs().max() > 0.1 and (got - student).abs().max() > 0.1  # neither the base nor the student
    # leaving the view leaves no hook behind: the student computes as before
    with torch.no_grad():
        torch.testing.assert_close(completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch), student,
                                   rtol=0, atol=0)


def test_weight_ema_state_round_trips_and_refuses_another_shape(small_lora):
    model, _ = small_lora
    teacher = make_teacher(model, TeacherConfig(teacher="ema", ema_rate=0.3, ema_rank=2))
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(0.01)
    teacher.after_step()
    again = make_teacher(model, TeacherConfig(teacher="ema", ema_rate=0.3, ema_rank=2))
    again.load_state_dict(teacher.state_dict())
    for key, tensor in teacher.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor)
    state = teacher.state_dict()
    for other in (TeacherConfig(teacher="ema", ema_rank=1), TeacherConfig(teacher="ema", ema_rank=0),
                  TeacherConfig(teacher="factor_ema")):
        with pytest.raises(ValueError, match="does not match teacher"):
            make_teacher(model, other).load_state_dict(state)


def test_kinds_and_the_anchor_setting(small_lora):
    model, _ = small_lora
    assert isinstance(make_teacher(model, TeacherConfig(teacher="ema")), WeightEMATeacher)
    assert isinstance(make_teacher(model, TeacherConfig(teacher="factor_ema")), FactorEMATeacher)
    with pytest.raises(ValueError, match="anchor"):
        TeacherConfig(teacher="base", anchor=0.1)
    with pytest.raises(ValueError, match="anchor"):
        TeacherConfig(teacher="ema", anchor=1.0)


def test_a_teacher_kind_registered_in_one_call_is_a_valid_setting_and_is_built(small_lora):
    """The 'where to add' table's row: a teacher kind is one register_teacher call."""
    from sdft_kit.config import TEACHER_KINDS, Config
    from sdft_kit.teachers import TEACHERS, FrozenTeacher, register_teacher

    model, _ = small_lora
    built = []
    register_teacher("toy", lambda model, c: built.append(c.ema_rate) or FrozenTeacher(model))
    try:
        config = Config().replace(teacher="toy", ema_rate=0.5)  # validated like the built-in kinds
        assert isinstance(make_teacher(model, config.teacher), FrozenTeacher) and built == [0.5]
    finally:
        TEACHERS.pop("toy")
        TEACHER_KINDS.remove("toy")
    with pytest.raises(ValueError, match="teacher must be one of ema, base, factor_ema, live; got 'toy'"):
        Config().replace(teacher="toy")
