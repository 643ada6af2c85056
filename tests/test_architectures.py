"""Other model families, as tiny random-weight models built locally (tests/tiny_models.py):
Llama 3, Qwen3 (with its thinking switch) and Gemma 3 (no system role), through train, the
teacher check, evaluation and generate. Random weights write garbage, so the tests check
prompts, end tokens, masks and shapes, not text."""

import json
from importlib.resources import files

import pytest
import torch

from sdft_kit import Config, Trainer, load_adapter
from sdft_kit.batch import demonstration_batch, eos_ids, tokenize_prompts, turn_end_id
from sdft_kit.check import check_teacher
from sdft_kit.cli import main
from sdft_kit.demos import render, student_prompt, teacher_prompt
from sdft_kit.evaluate import EvalItem, evaluate
from sdft_kit.models import ModelConfig, load_model, load_tokenizer

FAMILIES = ("llama3", "qwen3", "gemma3")
TURN_END = {"llama3": "<|eot_id|>", "qwen3": "<|im_end|>", "gemma3": "<end_of_turn>"}
SYSTEM = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_end_tokens_and_padding_follow_the_family(family, tiny_model_dir, demo_examples):
    tokenizer = load_tokenizer(str(tiny_model_dir(family)))
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "left"  # llama3 ships no pad token
    end = turn_end_id(tokenizer)
    assert tokenizer.convert_ids_to_tokens([end]) == [TURN_END[family]]  # gemma's EOS is <eos>, its turns end here
    prompts = [student_prompt(tokenizer, ex) for ex in demo_examples[:2]]
    ids, mask = tokenize_prompts(tokenizer, prompts, torch.device("cpu"))
    first = ids[mask.bool().long().argmax(-1) == 0][0]
    if tokenizer.bos_token_id is not None:  # the template writes BOS; tokenizing must not add a second
        assert int((first == tokenizer.bos_token_id).sum()) == 1
    batch = demonstration_batch(tokenizer, prompts, [ex.demonstration for ex in demo_examples[:2]], torch.device("cpu"))
    last = batch.completion_ids[0][batch.completion_mask[0].bool()][-1]
    assert int(last) == end  # SFT targets end the turn the way the model does
    system = render(tokenizer, SYSTEM)
    assert "Be brief." in system and system.index("Be brief.") < system.index("What is 2+2?")
    if family == "gemma3":  # no system role: the template folds it into the first user turn
        assert "<start_of_turn>system" not in system and "<start_of_turn>user\nBe brief." in system


def test_a_template_that_refuses_the_system_role_gets_it_in_the_first_user_turn(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir("gemma3")))
    tokenizer.chat_template = (files("trl") / "chat_templates" / "gemma.jinja").read_text()  # Gemma 1/2: raises
    text = render(tokenizer, SYSTEM)
    assert "<start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>" in text


def test_qwen3_thinking_switch_applies_to_both_prompts_and_travels_with_the_adapter(tiny_model_dir, demo_examples,
                                                                                   tmp_path):
    path = str(tiny_model_dir("qwen3"))
    example = demo_examples[0]
    prompts = {}
    for thinking in ("auto", "on", "off"):
        tokenizer = load_tokenizer(path, ModelConfig(model=path, thinking=thinking))
        prompts[thinking] = (student_prompt(tokenizer, example), teacher_prompt(tokenizer, example, ["4"]))
    empty_think = "<think>\n\n</think>\n\n"
    assert all(p.endswith(empty_think) for p in prompts["off"])  # non-thinking mode, both sides
    assert not any(p.endswith(empty_think) for p in prompts["on"] + prompts["auto"])
    with pytest.raises(ValueError, match="no thinking switch"):
        load_tokenizer("embedded", ModelConfig(thinking="off"))
    # a run in non-thinking mode saves a tokenizer that still renders that way
    config = Config().replace(model=path, thinking="off", method="sft", steps=1, batch_size=2, threads=1)
    trainer = Trainer(config, demo_examples[:2], tmp_path / "run")
    list(trainer.steps())
    _, reloaded = load_adapter(tmp_path / "run" / "adapter", config.model)
    assert student_prompt(reloaded, example) == prompts["off"][0]


@pytest.mark.parametrize("family", FAMILIES)
def test_train_check_evaluate_and_generate_run_through_the_family(family, tiny_model_dir, demo_examples, tmp_path,
                                                                  capsys):
    path = str(tiny_model_dir(family))
    examples = demo_examples[:4]
    for method in ("sdft", "sft"):
        config = Config().replace(model=path, method=method, steps=2, batch_size=2, max_new_tokens=8, threads=1,
                                  teacher="ema")
        trainer = Trainer(config, examples, tmp_path / method)
        records = list(trainer.steps())
        assert [r["step"] for r in records] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
        assert (tmp_path / method / "adapter" / "adapter_config.json").is_file()
    model, tokenizer = trainer.model, trainer.tokenizer
    # rollouts stop at any of the family's end tokens
    assert turn_end_id(tokenizer) in eos_ids(model, tokenizer)
    check = check_teacher(model, tokenizer, examples, templates=["plain"], n=2, max_new_tokens=4, scorer="contains")
    assert check.records == 2 and check.results[0].student_accuracy is not None
    items = [EvalItem(({"role": "user", "content": "What is 2+2?"},), ["4"]),
             EvalItem(({"role": "user", "content": "Pick one."},), ["B"], "choice", ["A", "B"])]
    result = evaluate(model, tokenizer, items, max_new_tokens=4, progress=False)
    assert len(result.outputs) == 2 and result.outputs[1] in ("A", "B")
    assert main(["generate", "--adapter", str(tmp_path / "sft" / "adapter"), "--prompt", "Hi?",
                 "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    run = json.loads((tmp_path / "sdft" / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(run["sample"]["tokens"]) <= 8


def test_the_families_load_like_any_hub_model(tiny_model_dir):
    for family in FAMILIES:
        model, tokenizer = load_model(str(tiny_model_dir(family)))
        assert model.generation_config.pad_token_id == tokenizer.pad_token_id
        assert model.config.vocab_size >= len(tokenizer)  # qwen3 pads its vocabulary past the tokenizer
