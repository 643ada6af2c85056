"""The fast paths give the same numbers as the plain computation."""

import contextlib

import pytest
import torch

import sdft_kit.rollout as rollout_module
from sdft_kit import Config, Trainer, add_lora, load_model
from sdft_kit.demos import student_prompt
from sdft_kit.config import LossConfig
from sdft_kit.losses import teacher_topk
from sdft_kit.batch import Completions, completion_logits
from sdft_kit.models import lora_parameters
from sdft_kit.rollout import RolloutConfig, rollout
from sdft_kit.scoring import TeacherScores
from sdft_kit.update import distill_loss, importance_weights


def _perturbed_lora_model():
    model, tokenizer = load_model("embedded")
    model = add_lora(model, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.05)
    return model, tokenizer


@pytest.mark.parametrize("overrides", [
    dict(vocab="full", alpha=0.0, teacher="base"),
    dict(vocab="topk", topk=10, alpha=0.5, teacher="ema", skip_first=3),
])
def test_chunked_step_equals_whole_batch(demo_examples, overrides):
    config = Config().replace(batch_size=4, max_new_tokens=12, **overrides)
    results = {}
    for chunk_size in (0, 1):
        model, tokenizer = _perturbed_lora_model()
        trainer = Trainer(config.replace(chunk_size=chunk_size), demo_examples, model=model, tokenizer=tokenizer)
        timings = {"rollout": 0.0, "teacher": 0.0, "student": 0.0}
        part = trainer._micro_batch(timings)
        loss, kl_sum, tokens = part.loss, part.divergence_sum, part.tokens
        grads = {n: p.grad.clone() for n, p in lora_parameters(model).items()}
        results[chunk_size] = (loss, kl_sum, tokens, grads)
    (loss0, kl0, tokens0, grads0), (loss1, kl1, tokens1, grads1) = results[0], results[1]
    assert tokens0 == tokens1  # the same rollout
    assert loss1 == pytest.approx(loss0, rel=1e-4)
    assert kl1 == pytest.approx(kl0, rel=1e-4)
    assert any(g.abs().sum() > 0 for g in grads0.values())
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, rtol=1e-3, atol=1e-6)


def test_merged_lora_decoding_matches_plain_decoding(demo_examples, monkeypatch):
    model, tokenizer = _perturbed_lora_model()
    prompts = [student_prompt(tokenizer, ex) for ex in demo_examples[:3]]
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    merged = rollout(model, tokenizer, prompts, RolloutConfig(max_new_tokens=16), do_sample=False)
    # the round trip leaves the shared base weights as they were, up to float rounding
    for name, p in model.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(p.detach(), base[name], rtol=0, atol=1e-6)
    monkeypatch.setattr(rollout_module, "merged_lora", lambda m: contextlib.nullcontext())
    plain = rollout(model, tokenizer, prompts, RolloutConfig(max_new_tokens=16), do_sample=False)
    assert torch.equal(merged.completion_ids, plain.completion_ids)
    assert torch.equal(merged.completion_mask, plain.completion_mask)


def test_16_bit_bases_are_not_merged_so_their_frozen_weights_stay_exact(demo_examples):
    from sdft_kit import ModelConfig

    model, tokenizer = load_model("embedded", ModelConfig(dtype="bfloat16"))
    model = add_lora(model, seed=0)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(0.05)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    rollout(model, tokenizer, [student_prompt(tokenizer, demo_examples[0])], RolloutConfig(max_new_tokens=4))
    for name, p in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p.detach(), base[name]), name  # a bf16 merge round trip would have moved them


# -- rollouts from other weights (the vllm engine): importance weights in the loss --

def test_importance_weights_are_capped_ratios_without_gradient():
    student = torch.tensor([[-1.0, -0.5, -3.0]], requires_grad=True)
    sampler = torch.tensor([[-1.0, -2.0, -2.0]])
    weights = importance_weights(student, sampler, cap=2.0, level="token")
    torch.testing.assert_close(weights, torch.tensor([[1.0, 2.0, torch.e ** -1.0]]))
    assert not weights.requires_grad


def _student_batch(model, tokenizer, demo_examples):
    torch.manual_seed(0)
    prompts = [student_prompt(tokenizer, ex) for ex in demo_examples[:2]]
    batch = rollout(model, tokenizer, prompts, RolloutConfig(max_new_tokens=10))
    with torch.no_grad(), model.disable_adapter():  # the base model as a stand-in teacher
        teacher_lp = torch.log_softmax(completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch), -1)
    buckets, indices = teacher_topk(teacher_lp, 20)
    teacher = TeacherScores(buckets, indices, teacher_lp[..., 0], indices[..., :2], buckets[..., :2])
    return batch, teacher


def test_importance_weighted_loss_equals_the_plain_loss_when_sampler_and_student_agree(demo_examples):
    model, tokenizer = _perturbed_lora_model()
    batch, teacher = _student_batch(model, tokenizer, demo_examples)
    config = LossConfig(vocab="topk")

    def loss_and_grads(b):
        model.zero_grad()
        scores = distill_loss(model, b, teacher, config)
        scores.loss.backward()
        return scores, {n: p.grad.clone() for n, p in lora_parameters(model).items()}

    plain, plain_grads = loss_and_grads(batch)
    agree = Completions(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                        plain.sampled_logprobs.clone())
    same, same_grads = loss_and_grads(agree)
    torch.testing.assert_close(same.is_weight, torch.ones_like(same.is_weight))
    torch.testing.assert_close(same.loss, plain.loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(same_grads[name], grad)

    # a sampler that made the first counted token twice as likely as the student does: with is_level 'token'
    # that token's divergence counts half in its sequence's mean; with 'sequence' (the official code's) the
    # sequence's every token is weighted by the mean of its weights
    col = int(plain.mask[0].nonzero()[0])
    halved = agree.sampler_logprobs.clone()
    halved[0, col] += torch.log(torch.tensor(2.0))
    skewed_batch = Completions(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask, halved)
    weights = torch.ones_like(plain.per_token)
    weights[0, col] = 0.5
    config = LossConfig(vocab="topk", is_level="token")
    skewed, _ = loss_and_grads(skewed_batch)
    per_seq = (plain.per_token * weights * plain.mask).sum(-1) / plain.mask.sum(-1)
    torch.testing.assert_close(skewed.loss, per_seq.mean())
    config = LossConfig(vocab="topk", is_level="sequence")
    skewed, _ = loss_and_grads(skewed_batch)
    row_weight = (weights * plain.mask).sum(-1, keepdim=True) / plain.mask.sum(-1, keepdim=True)
    per_seq = (plain.per_token * row_weight * plain.mask).sum(-1) / plain.mask.sum(-1)
    torch.testing.assert_close(skewed.loss, per_seq.mean())


def test_unknown_engines_are_refused_and_the_removed_int8_falls_back_to_hf():
    with pytest.raises(ValueError, match="engine must be one of"):
        RolloutConfig(engine="fp8")
    with pytest.warns(UserWarning, match="'int8' no longer exists"):  # run directories written before still load
        assert RolloutConfig(engine="int8").engine == "hf"
