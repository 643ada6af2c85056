"""The vllm rollout engine samples with the student's weights, before and after a real optimizer step.

Needs the vLLM extra (`make install-vllm`); skipped without it, except under
SDFT_KIT_REQUIRE_VLLM=1 (CI), where a missing vLLM fails. One engine (fp32, eager, a
small KV cache) serves the whole module.
"""

import importlib.util
import os
import sys

import pytest
import torch

from sdft_kit import SAMPLE_DATA, RolloutConfig, load_examples
from sdft_kit.batch import completion_logits, demonstration_batch, eos_ids
from sdft_kit.config import TrainConfig
from sdft_kit.demos import student_prompt
from sdft_kit.models import lora_parameters
from sdft_kit.rollout import make_engine
from sdft_kit.update import demonstration_loss, make_optimizer, optimizer_step

from test_fast_paths import _perturbed_lora_model

# fp32 vLLM against the fp32 student, per token: measured up to 5e-5 on this CPU
# (different kernels and summation order); 1e-3 leaves room for other CPUs.
TOLERANCE = 1e-3
TEMPERATURE = 0.8


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("SDFT_KIT_REQUIRE_VLLM"):
            pytest.fail("SDFT_KIT_REQUIRE_VLLM is set but vLLM is not installed (make install-vllm)")
        pytest.skip("vLLM is not installed (make install-vllm)")


@pytest.fixture(scope="module")
def student():
    """The embedded model with a LoRA moved away from zero, so the adapter changes what is sampled."""
    model, tokenizer = _perturbed_lora_model()
    examples = load_examples(SAMPLE_DATA)
    return model, tokenizer, examples, [student_prompt(tokenizer, ex) for ex in examples[:3]]


@pytest.fixture(scope="module")
def engine(student):
    require_vllm()
    model, tokenizer, _, _ = student
    config = RolloutConfig(engine="vllm", vllm_dtype="float32", vllm_kv_cache_mb=64, max_new_tokens=12,
                           temperature=TEMPERATURE, generations_per_prompt=2)
    return make_engine(model, tokenizer, config)


def student_logprobs(model, batch) -> torch.Tensor:
    """Teacher-forced log p_student(token) at the sampling temperature, on the completion tokens."""
    with torch.no_grad():
        logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    logprobs = torch.log_softmax(logits.float() / TEMPERATURE, -1)
    return logprobs.gather(-1, batch.completion_ids[..., None])[..., 0][batch.completion_mask.bool()]


def test_vllm_samples_carry_the_students_own_log_probs(student, engine):
    model, tokenizer, _, prompts = student
    torch.manual_seed(0)
    batch = engine.sample(prompts)
    assert batch.completion_ids.shape[0] == 6 and batch.completion_ids.shape[1] <= 12
    assert torch.equal(batch.prompt_ids[0], batch.prompt_ids[1])  # grouped by prompt
    assert (batch.prompt_mask[:, -1] == 1).all()  # left-padded, as the hf engine's
    assert batch.temperature == TEMPERATURE and batch.sampler_logprobs.shape == batch.completion_ids.shape
    eos = eos_ids(model, tokenizer)
    for ids, mask in zip(batch.completion_ids.tolist(), batch.completion_mask.tolist()):
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n)
        assert n == len(ids) or ids[n - 1] in eos  # short only where it ended with an end token
        assert not any(t in eos for t in ids[:n - 1])  # and nothing after its first one
    recorded = batch.sampler_logprobs[batch.completion_mask.bool()]
    torch.testing.assert_close(recorded, student_logprobs(model, batch), rtol=0, atol=TOLERANCE)

    torch.manual_seed(0)  # sampling is seeded from torch's generator
    again = engine.sample(prompts)
    assert torch.equal(again.completion_ids, batch.completion_ids)


def test_after_an_optimizer_step_vllm_samples_from_the_new_weights(student, engine):
    model, tokenizer, examples, prompts = student
    engine.sample(prompts)  # synced with the current weights
    before = {name: p.detach().clone() for name, p in lora_parameters(model).items()}
    optimizer, scheduler = make_optimizer(model, TrainConfig(learning_rate=1e-2, warmup_ratio=0.0, steps=1))
    demos = demonstration_batch(tokenizer, prompts, [ex.demonstration for ex in examples[:3]], torch.device("cpu"))
    demonstration_loss(model, demos).loss.backward()
    optimizer_step(model, optimizer, scheduler)
    engine.after_step()

    torch.manual_seed(1)
    batch = engine.sample(prompts)
    recorded = batch.sampler_logprobs[batch.completion_mask.bool()]
    torch.testing.assert_close(recorded, student_logprobs(model, batch), rtol=0, atol=TOLERANCE)
    after = {name: p.detach().clone() for name, p in lora_parameters(model).items()}
    with torch.no_grad():
        for name, p in lora_parameters(model).items():
            p.copy_(before[name])
        old = student_logprobs(model, batch)
        for name, p in lora_parameters(model).items():
            p.copy_(after[name])
    assert float((recorded - old).abs().max()) > 50 * TOLERANCE  # the old weights would not have sampled these


def test_a_missing_vllm_is_a_one_line_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` sees when it is not installed
    with pytest.raises(RuntimeError, match=r"rollout.engine='vllm' needs vLLM.*pip install 'sdft-kit\[vllm") as err:
        make_engine(None, None, RolloutConfig(engine="vllm"))
    assert "\n" not in str(err.value)


def test_vllm_settings_are_checked():
    with pytest.raises(ValueError, match="vllm_gpu_memory must be > 0 and < 1"):
        RolloutConfig(vllm_gpu_memory=1.5)
    with pytest.raises(ValueError, match="vllm_dtype must be one of"):
        RolloutConfig(vllm_dtype="int4")
    with pytest.raises(ValueError, match="vllm_kv_cache_mb must be >= 16"):
        RolloutConfig(vllm_kv_cache_mb=0)
