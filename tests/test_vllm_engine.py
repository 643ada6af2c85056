"""The vllm rollout engine samples with the student's weights, before and after a real optimizer step.

Needs the vLLM extra (`make install-vllm`); skipped without it, except under
SDFT_KIT_REQUIRE_VLLM=1 (CI), where a missing vLLM fails. One engine (fp32, eager, a
small KV cache) serves the whole module.
"""

import importlib.util
import math
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

pytestmark = pytest.mark.usefixtures("one_thread")  # decoding on a shared 2-core CPU: one thread is faster

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


def test_a_second_engine_reuses_the_process_engine_and_samples_its_own_students_weights(student, engine):
    """Trainers after the first (a sweep, a notebook's second run) reuse the engine; each syncs its own weights."""
    from sdft_kit.models import add_lora, load_model

    model, tokenizer, _, prompts = student
    other, _ = load_model("embedded")
    other = add_lora(other, seed=3)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in lora_parameters(other).values():
            p.add_(torch.randn_like(p) * 0.05)
    second = make_engine(other, tokenizer, engine.config)
    assert second.reused and second.llm is engine.llm and second.start_seconds < 1
    for sampler, weights in ((second, other), (engine, model), (second, other)):  # each switch pushes every weight
        torch.manual_seed(2)
        batch = sampler.sample(prompts)
        recorded = batch.sampler_logprobs[batch.completion_mask.bool()]
        torch.testing.assert_close(recorded, student_logprobs(weights, batch), rtol=0, atol=TOLERANCE)
    assert float((recorded - student_logprobs(model, batch)).abs().max()) > 50 * TOLERANCE  # the models differ


def test_the_kv_cache_is_sized_from_the_run():
    from types import SimpleNamespace

    from sdft_kit.vllm_engine import kv_cache_plan, kv_bytes_per_token

    text = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
    config = SimpleNamespace(get_text_config=lambda: text)  # the embedded model's shape: head_dim 576 / 9 = 64
    assert kv_bytes_per_token(config, torch.bfloat16) == 2 * 30 * 3 * 64 * 2 == 23040
    # 4 prompts of up to 41 tokens + 64 new: one 128-token block each, one to spare: 5 x 128 x 23040 B = 14.1 MiB
    assert kv_cache_plan(config, torch.bfloat16, RolloutConfig(max_new_tokens=64), 4, 41) == (16, 105)  # >= 16
    # 8 prompts x 2 generations of up to 200 + 128 tokens: 3 blocks each, 49 blocks of 128 x 46080 B (fp32)
    assert kv_cache_plan(config, torch.float32, RolloutConfig(max_new_tokens=128, generations_per_prompt=2), 8,
                         200) == (math.ceil(49 * 128 * 46080 / 2**20), 328) == (276, 328)
    # an explicit size, or a run that is not known: vLLM fits the sequence length to the cache
    assert kv_cache_plan(config, torch.float32, RolloutConfig(vllm_kv_cache_mb=64), 4, 41) == (64, -1)
    assert kv_cache_plan(config, torch.float32, RolloutConfig(), None, None) == (256, -1)


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
    with pytest.raises(ValueError, match=r"vllm_kv_cache_mb must be 0 \(sized from the run\) or >= 16; got 8"):
        RolloutConfig(vllm_kv_cache_mb=8)
    assert RolloutConfig().vllm_kv_cache_mb == 0  # sized from the run by default
