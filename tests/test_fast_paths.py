"""The fast paths give the same numbers as the plain computation."""

import contextlib

import pytest
import torch

import sdft_kit.rollout as rollout_module
from sdft_kit import Config, Trainer, add_lora, load_model
from sdft_kit.demos import student_prompt
from sdft_kit.rollout import RolloutConfig, rollout
from sdft_kit.scoring import lora_parameters


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
        loss, kl_sum, tokens, _ = trainer._micro_batch(timings)
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
