import pytest
import torch

from sdft_kit import RolloutConfig
from sdft_kit.rollout import rollout
from sdft_kit.demos import student_prompt
from sdft_kit.batch import demonstration_batch, eos_ids, mask_after_eos


def test_mask_up_to_and_including_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 2, 9, 9, 9], [5, 6, 7, 8, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(mask_after_eos(ids, [2]), expected)
    # several end tokens: whichever comes first ends the answer
    assert torch.equal(mask_after_eos(torch.tensor([[5, 3, 2]]), [2, 3]), torch.tensor([[1, 1, 0]]))


def test_rollout_batches_left_padded_prompts_with_several_generations(lora_model, demo_examples):
    model, tokenizer = lora_model
    examples = [demo_examples[0], demo_examples[5]]
    prompts = [student_prompt(tokenizer, ex) for ex in examples]
    torch.manual_seed(0)
    batch = rollout(model, tokenizer, prompts, RolloutConfig(max_new_tokens=12, generations_per_prompt=2))
    assert batch.prompt_ids.shape[0] == batch.completion_ids.shape[0] == 4
    assert torch.equal(batch.prompt_ids[0], batch.prompt_ids[1])  # grouped by prompt
    assert (batch.prompt_mask[:, -1] == 1).all()  # left padding: every prompt ends at the right edge
    assert batch.completion_ids.shape[1] <= 12
    eos = eos_ids(model, tokenizer)
    for ids, mask in zip(batch.completion_ids, batch.completion_mask):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # a prefix
        ended = [i for i, t in enumerate(ids.tolist()) if t in eos]
        if ended:
            assert n == ended[0] + 1  # up to and including the first EOS
        else:
            assert n == ids.shape[0]


def test_greedy_rollout_is_deterministic(lora_model, demo_examples):
    model, tokenizer = lora_model
    prompts = [student_prompt(tokenizer, demo_examples[0])]
    a = rollout(model, tokenizer, prompts, RolloutConfig(max_new_tokens=8), do_sample=False)
    b = rollout(model, tokenizer, prompts, RolloutConfig(max_new_tokens=8), do_sample=False)
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_demonstration_batch_ends_each_target_with_eos(model_and_tokenizer, demo_examples):
    _, tokenizer = model_and_tokenizer
    examples = demo_examples[:3]
    prompts = [student_prompt(tokenizer, ex) for ex in examples]
    batch = demonstration_batch(tokenizer, prompts, [ex.demonstration for ex in examples], torch.device("cpu"))
    for row, ex in enumerate(examples):
        ids = batch.completion_ids[row][batch.completion_mask[row].bool()]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[:-1]) == ex.demonstration
    assert batch.texts(tokenizer) == [ex.demonstration for ex in examples]


def test_chat_answers_one_message_like_generate_text_on_the_rendered_prompt(lora_model):
    from sdft_kit import chat, generate_text
    from sdft_kit.demos import render

    model, tokenizer = lora_model
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 7 plus 5?"}]
    expected = generate_text(model, tokenizer, [render(tokenizer, messages)], 12)[0]
    assert chat(model, tokenizer, "What is 7 plus 5?", 12, system="Be brief.") == expected
    assert chat(model, tokenizer, messages, 12) == expected


def test_auto_engine_picks_vllm_only_where_it_can_run(monkeypatch, lora_model):
    import importlib.util
    from types import SimpleNamespace

    from sdft_kit.rollout import resolve_engine

    model, _ = lora_model
    monkeypatch.delenv("SDFT_KIT_AUTO_ENGINE", raising=False)
    auto = RolloutConfig()
    assert auto.engine == "auto"  # the default
    assert resolve_engine(RolloutConfig(engine="hf"), model, processes=2) == ("hf", "set in the config")
    assert resolve_engine(RolloutConfig(engine="vllm"), model) == ("vllm", "set in the config")
    assert resolve_engine(auto, model, processes=2)[0] == "hf"  # accelerate: the vllm engine runs in one process
    four_bit = SimpleNamespace(config=SimpleNamespace(quantization_config={"load_in_4bit": True}))
    assert resolve_engine(auto, four_bit) == ("hf", "a 4-bit base (vLLM would hold a full-precision copy)")
    installed = importlib.util.find_spec("vllm") is not None
    assert resolve_engine(auto, model) == (("vllm", "vLLM is installed") if installed else ("hf", "vLLM is not installed"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    assert resolve_engine(auto, model) == ("hf", "vLLM is not installed")
    monkeypatch.undo()
    monkeypatch.setenv("SDFT_KIT_AUTO_ENGINE", "hf")
    assert resolve_engine(auto, model) == ("hf", "SDFT_KIT_AUTO_ENGINE=hf")


def test_make_engine_says_what_auto_picked_and_one_off_rollouts_use_hf(monkeypatch, capsys, lora_model, demo_examples):
    from sdft_kit import vllm_engine
    from sdft_kit.rollout import make_engine

    model, tokenizer = lora_model
    monkeypatch.setenv("SDFT_KIT_AUTO_ENGINE", "hf")
    assert make_engine(model, tokenizer, RolloutConfig()).name == "hf"
    assert "rollout engine 'auto' -> hf (SDFT_KIT_AUTO_ENGINE=hf)" in capsys.readouterr().out
    # a one-off rollout never starts a vLLM engine for 'auto' (it would take longer to start than the call saves)
    monkeypatch.delenv("SDFT_KIT_AUTO_ENGINE")
    monkeypatch.setattr(vllm_engine, "VLLMEngine", None)  # starting one would fail here
    batch = rollout(model, tokenizer, [student_prompt(tokenizer, demo_examples[0])], RolloutConfig(max_new_tokens=4))
    assert batch.completion_ids.shape == (1, 4) or batch.completion_mask.sum() <= 4


def test_rollouts_for_several_steps_keep_the_samplers_logprobs(lora_model, demo_examples, one_thread):
    from sdft_kit.batch import completion_logits

    model, tokenizer = lora_model
    prompts = [student_prompt(tokenizer, ex) for ex in demo_examples[:2]]
    assert rollout(model, tokenizer, prompts, RolloutConfig(max_new_tokens=6)).sampler_logprobs is None  # on-policy
    torch.manual_seed(0)
    batch = rollout(model, tokenizer, prompts, RolloutConfig(max_new_tokens=10, temperature=0.7,
                                                             steps_per_generation=2))
    assert batch.sampler_logprobs.shape == batch.completion_ids.shape
    with torch.no_grad():
        logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    # what the loss computes for the student: log p(token) at the sampling temperature, from a full forward
    full = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    counted = batch.completion_mask.bool()
    torch.testing.assert_close(batch.sampler_logprobs[counted], full[counted], atol=1e-4, rtol=0)


def test_an_engine_registered_in_one_call_is_a_valid_setting_and_is_built():
    """The 'where to add' table's row: a rollout engine is one register_engine call."""
    from sdft_kit.config import ENGINES, Config
    from sdft_kit.rollout import ENGINE_BUILDERS, make_engine, register_engine

    built = []

    class Toy:
        name = "toy"

        def sample(self, prompts, *, do_sample=True):
            raise NotImplementedError

        def after_step(self):
            pass

    register_engine("toy", lambda model, tokenizer, config, **sizes: built.append(sizes) or Toy())
    try:
        config = Config().replace(engine="toy")  # validated like the built-in engines
        assert isinstance(make_engine(None, None, config.rollout, sequences=4, longest_prompt=30), Toy)
        assert built == [{"sequences": 4, "longest_prompt": 30}]
    finally:
        ENGINE_BUILDERS.pop("toy")
        ENGINES.remove("toy")
    with pytest.raises(ValueError, match="engine must be one of auto, hf, vllm; got 'toy'"):
        Config().replace(engine="toy")
