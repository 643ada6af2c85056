"""Tests for sdft_kit.update: importance weights, the distillation loss at a temperature, and the loss
and LoRA gradients against TRL's SDFTTrainer on the same token ids (the cross-check of issue 28)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from sdft_kit.batch import completion_logits
from sdft_kit.config import LossConfig, RolloutConfig, TeacherConfig
from sdft_kit.demos import student_prompt, teacher_prompt
from sdft_kit.models import lora_parameters
from sdft_kit.rollout import rollout
from sdft_kit.scoring import score_teacher
from sdft_kit.teachers import make_teacher
from sdft_kit.update import distill_loss, importance_weights


# --- importance weights -------------------------------------------------------------------------


def test_importance_weights_per_token_and_per_sequence_by_hand():
    student = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3]]))
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.3], [0.3, 0.6, 0.1]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # ratios 2, .5, 3 -> capped at 2: 2, .5, 2 ; row 2: 1, .5, (3, not a loss token)
    token = importance_weights(student, sampler, cap=2.0, level="token")
    torch.testing.assert_close(token, torch.tensor([[2.0, 0.5, 2.0], [1.0, 0.5, 2.0]]))
    sequence = importance_weights(student, sampler, cap=2.0, level="sequence", mask=mask)
    # the official code: capped ratios averaged over each row's loss tokens, one weight per row
    torch.testing.assert_close(sequence, torch.tensor([[1.5] * 3, [0.75] * 3]))
    with pytest.raises(ValueError, match="is_level"):
        importance_weights(student, sampler, cap=2.0, level="word")


# --- the loss on the real model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def scored_rollouts(demo_examples_once):
    """Three sampled completions of one prompt (no left padding anywhere), with the paper's teacher prompt,
    on an adapter moved off its zero start so that A and B both get gradients and the base teacher differs.
    Built once for the module: the tests only read it (and zero the gradients they make)."""
    from sdft_kit import add_lora, load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base, tokenizer = load_model("embedded")
    model = add_lora(base, seed=0)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval()  # no dropout either way; TRL then divides by no accumulation count
    example = demo_examples_once[1]
    torch.manual_seed(3)
    batch = rollout(model, tokenizer, [student_prompt(tokenizer, example)] * 3, RolloutConfig(max_new_tokens=12))
    batch = batch.with_teacher_prompts(tokenizer, [teacher_prompt(tokenizer, example, [example.demonstration])] * 3)
    assert (batch.completion_mask.sum(-1) > 3).all()  # every row keeps tokens after skipping 3
    yield model, tokenizer, example, batch
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_examples_once():
    from sdft_kit import SAMPLE_DATA, load_examples

    return load_examples(SAMPLE_DATA)


def _grads(model) -> torch.Tensor:
    grads = torch.cat([p.grad.flatten().double() for p in lora_parameters(model).values()])
    model.zero_grad(set_to_none=True)
    return grads


def _ours(model, batch, config: LossConfig):
    teacher = score_teacher(make_teacher(model, TeacherConfig(teacher="base")), batch, config)
    loss = distill_loss(model, batch, teacher, config).loss
    loss.backward()
    return loss.item(), _grads(model)


def test_distill_loss_at_temperature_07_matches_a_float64_hand_computation(scored_rollouts):
    model, _, _, batch = scored_rollouts
    batch = dataclasses.replace(batch, temperature=0.7)
    config = LossConfig(skip_first=3)
    with torch.no_grad():
        student = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch).double()
        with model.disable_adapter():
            teacher = completion_logits(model, batch.teacher_prompt_ids, batch.teacher_prompt_mask, batch).double()
    p_t, log_s = torch.softmax(teacher / 0.7, -1), torch.log_softmax(student / 0.7, -1)
    per_token = (p_t * (torch.log(p_t) - log_s)).sum(-1)  # KL(teacher || student) at logits / 0.7
    mask = batch.completion_mask.clone()
    mask[:, :3] = 0
    expected = float(((per_token * mask).sum(-1) / mask.sum(-1)).mean())
    at_one = torch.softmax(teacher, -1)
    ignored = (at_one * (torch.log(at_one) - torch.log_softmax(student, -1))).sum(-1)
    assert abs(float(((ignored * mask).sum(-1) / mask.sum(-1)).mean()) - expected) > 1e-3  # T matters here
    loss, _ = _ours(model, batch, config)
    print(f"T 0.7: loss {loss:.5f}, by hand {expected:.5f}; with T ignored {float(((ignored * mask).sum(-1) / mask.sum(-1)).mean()):.5f}")
    assert loss == pytest.approx(expected, rel=1e-4)


def test_kl_clip_reaches_the_training_loss(scored_rollouts):
    """loss.kl_clip caps each vocabulary term of each token's KL (OPSD's 0.05), through score_teacher and distill_loss."""
    model, _, _, batch = scored_rollouts
    with torch.no_grad():
        student = torch.log_softmax(completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch).double(), -1)
        with model.disable_adapter():
            teacher = torch.log_softmax(completion_logits(model, batch.teacher_prompt_ids, batch.teacher_prompt_mask,
                                                          batch).double(), -1)
    terms = teacher.exp() * (teacher - student)
    mask = batch.completion_mask.clone()
    mask[:, :3] = 0

    def reduced(per_token):
        return float(((per_token * mask).sum(-1) / mask.sum(-1)).mean())

    loss, grads = _ours(model, batch, LossConfig(skip_first=3, kl_clip=0.05))
    plain, plain_grads = _ours(model, batch, LossConfig(skip_first=3))
    assert loss == pytest.approx(reduced(terms.clamp(max=0.05).sum(-1)), rel=1e-4)
    assert plain == pytest.approx(reduced(terms.sum(-1)), rel=1e-4) and plain - loss > 0.05
    assert _cosine(grads, plain_grads) < 0.999  # the capped terms no longer pull


# --- TRL's SDFTTrainer on the same token ids ------------------------------------------------------


@pytest.fixture(scope="module")
def trl_trainer(scored_rollouts, tmp_path_factory):
    trl = pytest.importorskip("trl.experimental.sdft")
    from datasets import Dataset

    model, tokenizer, example, batch = scored_rollouts
    args = trl.SDFTConfig(output_dir=str(tmp_path_factory.mktemp("trl")), report_to=[], use_cpu=True, bf16=False,
                          gradient_checkpointing=False, per_device_train_batch_size=1, num_generations=1,
                          teacher_model_kind="base", distillation_mode="full_logits", distillation_is_clip=None,
                          num_loss_tokens_to_skip=3, temperature=1.0, save_strategy="no", disable_tqdm=True)
    data = Dataset.from_list([{"prompt": list(example.messages), "privileged_context": example.demonstration}])
    with warnings.catch_warnings():  # TRL warns that the model already carries an adapter: it is ours, on purpose
        warnings.simplefilter("ignore")
        trainer = trl.SDFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    inputs = {"prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
              "completion_ids": batch.completion_ids, "completion_mask": batch.completion_mask,
              "teacher_input_ids": torch.cat([batch.teacher_prompt_ids, batch.completion_ids], 1),
              "teacher_attention_mask": torch.cat([batch.teacher_prompt_mask, batch.completion_mask], 1)}
    return trainer, inputs


def _theirs(trainer, inputs):
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.item(), _grads(trainer.model)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_loss_and_lora_gradients_equal_trls_sdft_trainer(scored_rollouts, trl_trainer, alpha):
    model, _, _, batch = scored_rollouts
    trainer, inputs = trl_trainer
    assert trainer.model is model  # the same weights, adapter and token ids on both sides
    trainer.args.distillation_alpha, trainer.args.distillation_mode, trainer.temperature = alpha, "full_logits", 1.0
    ours, our_grads = _ours(model, batch, LossConfig(alpha=alpha, skip_first=3))
    theirs, their_grads = _theirs(trainer, inputs)
    print(f"alpha {alpha}: loss {ours:.6f} vs TRL {theirs:.6f}, gradient cosine {_cosine(our_grads, their_grads):.10f}")
    assert ours == pytest.approx(theirs, rel=1e-4) and ours > 1e-3
    assert _cosine(our_grads, their_grads) > 0.9999
    assert float(our_grads.norm()) == pytest.approx(float(their_grads.norm()), rel=1e-3)


def test_trls_default_topk_and_temperature_07_are_reproduced(scored_rollouts, trl_trainer):
    """TRL's default objective (JSD 0.5 on the student's top-k, renormalised, no tail) at temperature 0.7."""
    model, _, _, batch = scored_rollouts
    trainer, inputs = trl_trainer
    trainer.args.distillation_alpha, trainer.args.distillation_mode = 0.5, "topk_logits"
    trainer.args.distillation_topk, trainer.args.distillation_add_tail = 20, False
    trainer.temperature = 0.7
    config = LossConfig(alpha=0.5, vocab="topk", topk=20, topk_support="student", topk_tail=False, skip_first=3)
    ours, our_grads = _ours(model, dataclasses.replace(batch, temperature=0.7), config)
    theirs, their_grads = _theirs(trainer, inputs)
    print(f"TRL default top-k at T 0.7: loss {ours:.6f} vs TRL {theirs:.6f}, cosine {_cosine(our_grads, their_grads):.10f}")
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert _cosine(our_grads, their_grads) > 0.9999
    # and the teacher's support (sdft-kit's default top-k) is a different objective
    other, _ = _ours(model, dataclasses.replace(batch, temperature=0.7), dataclasses.replace(config,
                                                                                            topk_support="teacher"))
    assert not math.isclose(other, theirs, rel_tol=1e-3)
