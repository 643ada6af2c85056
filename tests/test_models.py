import sys
import time

import pytest
import torch

from sdft_kit import add_lora, load_adapter, load_model, make_teacher
from sdft_kit.demos import student_prompt, teacher_prompt
from sdft_kit.batch import completion_logits, demonstration_batch, tokenize_prompts
from sdft_kit.config import TEACHER_KINDS, TeacherConfig
from sdft_kit.models import lora_parameters
from sdft_kit.teachers import FactorEMATeacher


def _perturb_adapter(model, scale=0.05):
    # LoRA starts as an exact no-op (B = 0); give it weights so views differ.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(torch.randn_like(p) * scale)


def _batch(tokenizer, examples, device="cpu"):
    prompts = [student_prompt(tokenizer, ex) for ex in examples]
    return demonstration_batch(tokenizer, prompts, [ex.demonstration for ex in examples], torch.device(device))


def test_embedded_model_loads_fast_from_cache(model_and_tokenizer):
    start = time.perf_counter()
    model, tokenizer = load_model("embedded")
    assert time.perf_counter() - start < 2.0
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_lora_on_all_linear_layers(lora_model):
    model, _ = lora_model
    adapted = {name.split(".")[-4] for name in lora_parameters(model) if name.endswith("lora_A.default.weight")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_adapter_save_and_reload_give_identical_logits(lora_model, demo_examples, tmp_path):
    model, tokenizer = lora_model
    _perturb_adapter(model)
    batch = _batch(tokenizer, demo_examples[:3])
    with torch.no_grad():
        before = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
        with model.disable_adapter():
            base = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    assert not torch.allclose(before, base)  # the adapter does change the output
    model.save_pretrained(tmp_path / "adapter")
    reloaded, _ = load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        after = completion_logits(reloaded, batch.prompt_ids, batch.prompt_mask, batch)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_teacher_views_share_the_base_weights(lora_model, demo_examples):
    model, tokenizer = lora_model
    teachers = {kind: make_teacher(model, TeacherConfig(teacher=kind, ema_rate=0.5)) for kind in TEACHER_KINDS}
    _perturb_adapter(model)  # the EMAs start at the initial adapter, and the student moves away from it
    base_params = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    pointers = {n: p.data_ptr() for n, p in base_params.items()}
    adapter = sum(p.numel() for p in lora_parameters(model).values())
    for kind in ("ema", "factor_ema"):  # only adapter-sized state is kept (the default ema_rank), never base weights
        state = sum(t.numel() for t in teachers[kind].state_dict().values())
        assert state <= TeacherConfig().ema_rank * adapter and state < 0.1 * sum(p.numel() for p in base_params.values())

    batch = _batch(tokenizer, demo_examples[:2])
    seen = {}
    for kind, teacher in teachers.items():
        with torch.no_grad(), teacher.view() as view:
            seen[kind] = {n: p.data_ptr() for n, p in view.named_parameters() if "lora_" not in n}
            logits = completion_logits(view, batch.prompt_ids, batch.prompt_mask, batch)
        assert seen[kind] == pointers, f"teacher '{kind}' does not use the student's base weights"
        seen[kind] = logits
    # The views are really different teachers, computed on the same weights in memory.
    assert not torch.allclose(seen["base"], seen["live"])
    assert not torch.allclose(seen["ema"], seen["live"]) and not torch.allclose(seen["factor_ema"], seen["live"])
    # 'base' is exactly the model without adapter.
    fresh, _ = load_model("embedded")
    with torch.no_grad():
        plain = completion_logits(fresh, batch.prompt_ids, batch.prompt_mask, batch)
    torch.testing.assert_close(seen["base"], plain, atol=1e-4, rtol=1e-4)
    # Leaving the EMA view restores the student's own adapter.
    with torch.no_grad():
        live_again = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    torch.testing.assert_close(live_again, seen["live"], rtol=0, atol=0)


def test_factor_ema_update_moves_each_factor_towards_the_student(lora_model):
    model, _ = lora_model
    ema = FactorEMATeacher(model, rate=0.25)
    name, param = next(iter(lora_parameters(model).items()))
    start = ema.shadow[name].clone()
    with torch.no_grad():
        param.add_(1.0)
    ema.after_step()
    torch.testing.assert_close(ema.shadow[name], start + 0.25 * (param.detach() - start))


def test_left_padding_scores_like_an_unpadded_row(lora_model, demo_examples):
    """Positions follow the attention mask, so padding never changes a row's scores."""
    model, tokenizer = lora_model
    _perturb_adapter(model)
    by_length = sorted(demo_examples, key=lambda ex: len(student_prompt(tokenizer, ex)))
    short, long = by_length[0], by_length[-1]
    batch = _batch(tokenizer, [short, long])
    assert (batch.prompt_mask[0] == 0).any()  # row 0 is left-padded
    alone = _batch(tokenizer, [short])
    with torch.no_grad():
        padded = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
        single = completion_logits(model, alone.prompt_ids, alone.prompt_mask, alone)
    width = alone.completion_mask.sum()
    torch.testing.assert_close(padded[0, :width], single[0, :width], atol=1e-4, rtol=1e-4)


def test_completion_logits_equal_a_full_forward(lora_model, demo_examples):
    model, tokenizer = lora_model
    ex = demo_examples[0]
    batch = _batch(tokenizer, [ex])
    full_ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    with torch.no_grad():
        reference = model(input_ids=full_ids).logits[:, batch.prompt_ids.shape[1] - 1: -1]
        fast = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_teacher_prompt_tokens_contain_the_demonstration(model_and_tokenizer, demo_examples):
    _, tokenizer = model_and_tokenizer
    ex = demo_examples[0]
    text = teacher_prompt(tokenizer, ex, [ex.demonstration])
    ids, mask = tokenize_prompts(tokenizer, [text], torch.device("cpu"))
    assert tokenizer.decode(ids[0]) == text  # the template's specials are not doubled


def test_memory_report_and_auto_dtype_on_cpu():
    from sdft_kit.models import memory_report, resolve_dtype

    report = memory_report("cpu")
    assert set(report) == {"peak_rss_mb"} and report["peak_rss_mb"] > 100  # torch alone takes more
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_release_freed_memory_takes_effect_on_linux():
    from sdft_kit.models import release_freed_memory

    assert release_freed_memory() is True
