import json

import pytest
import torch

from sdft_kit import Config, Trainer, load_records
from sdft_kit.demos import student_prompt, teacher_prompt
from sdft_kit.losses import sequence_mean, token_divergence
from sdft_kit.batch import completion_logits
from sdft_kit.rollout import RolloutConfig, rollout
from sdft_kit.scoring import score_teacher
from sdft_kit.teachers import make_teacher

TINY = dict(batch_size=2, max_new_tokens=12, threads=0, save_every=1)


def _kl_on(model, tokenizer, example, batch):
    """Forward KL(base teacher || student) on fixed completions, full vocabulary, no skip."""
    scored = batch.with_teacher_prompts(tokenizer, [teacher_prompt(tokenizer, example, [example.demonstration])]
                                        * batch.completion_ids.shape[0])
    teacher = score_teacher(make_teacher(model), scored)
    with torch.no_grad():
        logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    return float(sequence_mean(token_divergence(logits, teacher.logprobs, batch.completion_ids), batch.completion_mask))


def test_ten_sdft_steps_lower_the_kl_on_fixed_completions(lora_model, demo_examples):
    model, tokenizer = lora_model
    example = demo_examples[0]
    torch.manual_seed(123)
    fixed = rollout(model, tokenizer, [student_prompt(tokenizer, example)] * 4, RolloutConfig(max_new_tokens=16))
    before = _kl_on(model, tokenizer, example, fixed)
    config = Config().replace(steps=10, batch_size=2, max_new_tokens=16, teacher="base", learning_rate=1e-3,
                              skip_first=0, template="paper")  # the template _kl_on scores with
    records = Trainer(config, [example], model=model, tokenizer=tokenizer).train(progress=False)
    after = _kl_on(model, tokenizer, example, fixed)
    assert len(records) == 10
    assert after < 0.8 * before, (before, after)


def test_records_carry_what_the_views_need(lora_model, demo_examples, tmp_path):
    model, tokenizer = lora_model
    config = Config().replace(steps=1, skip_first=3, **TINY)
    trainer = Trainer(config, demo_examples, tmp_path / "run", model=model, tokenizer=tokenizer)
    first = trainer.order.peek(config.train.batch_size)
    assert trainer.order.peek(config.train.batch_size) == first and trainer.order.seen == 0  # peeking does not move
    record = next(trainer.steps())
    assert record["sample"]["source"] == demo_examples[first[0]].source  # the batch peeked is the one trained
    assert record["step"] == 1 and record["steps"] == 1 and record["method"] == "sdft"
    assert record["loss"] >= 0 and record["mean_kl"] >= 0 and record["tokens"] > 0
    assert set(record["seconds"]) == {"rollout", "teacher", "student", "optimizer", "total"}
    assert record["seconds"]["rollout"] > 0 and record["peak_mem_mb"] > 100
    sample = record["sample"]
    n = len(sample["tokens"])
    assert n > 0 and "".join(sample["tokens"]).strip()
    for key in ("token_ids", "values", "in_loss", "student_logprob", "teacher_logprob", "student_topk", "teacher_topk"):
        assert len(sample[key]) == n, key
    assert sample["in_loss"][:3] == [0] * min(3, n)  # skip_first 3: the first 3 tokens are left out
    top = sample["teacher_topk"][0]
    assert len(top) == 5 and all(a[1] >= b[1] for a, b in zip(top, top[1:]))  # sorted by probability
    # the file holds exactly what was yielded
    assert load_records(tmp_path / "run") == [json.loads(json.dumps(record))]


@pytest.mark.parametrize("vocab", ["topk", "sampled"])
def test_reduced_vocabularies_train(lora_model, demo_examples, vocab):
    model, tokenizer = lora_model
    config = Config().replace(steps=1, vocab=vocab, topk=20, teacher="live", **TINY)
    record = Trainer(config, demo_examples, model=model, tokenizer=tokenizer).train_step()
    assert record["loss"] >= 0 and torch.isfinite(torch.tensor(record["loss"]))


def test_sft_baseline_lowers_its_loss(lora_model, demo_examples):
    model, tokenizer = lora_model
    config = Config().replace(method="sft", steps=8, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0)
    trainer = Trainer(config, demo_examples[:4], model=model, tokenizer=tokenizer)
    records = trainer.train(progress=False)
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]
    assert records[0]["mean_kl"] is None and records[0]["seconds"]["rollout"] == 0.0


def test_resume_continues_step_count_and_optimizer_state(demo_examples, tmp_path):
    config = Config().replace(method="sft", steps=3, batch_size=2, learning_rate=1e-3, save_every=1)
    straight = Trainer(config, demo_examples, tmp_path / "straight").train(progress=False)

    first = Trainer(config, demo_examples, tmp_path / "split")
    for record in first.steps():  # interrupted after step 2 (checkpoints every step)
        if record["step"] == 2:
            break
    resumed = Trainer(config, demo_examples, tmp_path / "split", resume=True)
    assert resumed.step == 2 and resumed.order.seen == 4
    for saved, loaded in zip(first.optimizer.state.values(), resumed.optimizer.state.values()):
        assert int(loaded["step"]) == 2
        torch.testing.assert_close(loaded["exp_avg"], saved["exp_avg"])
    assert resumed.scheduler.last_epoch == 2
    last = resumed.train(progress=False)
    assert [r["step"] for r in last] == [3]
    # same data order, same weights, same optimizer: step 3 is the step 3 of an unbroken run
    assert last[0]["loss"] == pytest.approx(straight[2]["loss"], rel=1e-4)
    assert [r["step"] for r in load_records(tmp_path / "split")] == [1, 2, 3]


def test_resume_sdft_restores_ema_teacher(demo_examples, tmp_path):
    config = Config().replace(steps=2, teacher="ema", **TINY)
    first = Trainer(config, demo_examples, tmp_path / "run")
    next(first.steps())
    resumed = Trainer(config, demo_examples, tmp_path / "run", resume=True)
    for name, tensor in first.teacher.shadow.items():
        torch.testing.assert_close(resumed.teacher.shadow[name], tensor, rtol=0, atol=0)
    assert [r["step"] for r in resumed.train(progress=False)] == [2]


def test_existing_run_is_never_overwritten(lora_model, demo_examples, tmp_path):
    model, tokenizer = lora_model
    run = tmp_path / "run"
    run.mkdir()
    Config().save(run / "config.yaml")  # a run of a version without run.json
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(Config().replace(steps=1, **TINY), demo_examples, run, model=model, tokenizer=tokenizer)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer(Config().replace(steps=1, **TINY), demo_examples, tmp_path / "new", model=model,
                tokenizer=tokenizer, resume=True)


def test_steps_per_generation_samples_once_for_several_steps_and_a_resume_samples_the_unused_again(
        demo_examples, tmp_path, one_thread):
    config = Config().replace(steps=4, steps_per_generation=2, **TINY)
    trainer = Trainer(config, demo_examples, tmp_path / "run")
    calls, sample = [], trainer.engine.sample
    trainer.engine.sample = lambda prompts, **kw: calls.append(len(prompts)) or sample(prompts, **kw)
    records = []
    for record in trainer.steps():
        records.append(record)
        if record["step"] == 3:
            break  # checkpointed (save_every 1), with step 4's rollouts sampled and not yet used
    assert calls == [4, 4]  # one engine call for steps 1-2, one for 3-4
    assert records[0]["seconds"]["rollout"] > 0 and records[1]["seconds"]["rollout"] == 0
    assert records[0]["is_weight"] == pytest.approx(1.0, abs=1e-3)  # sampled by the policy it trains
    assert records[1]["is_weight"] is not None  # the reused rollouts are weighted for the policy having moved
    unused = trainer.pending[0][0]  # step 4's examples
    resumed = Trainer(config, demo_examples, tmp_path / "run", resume=True)
    assert resumed.step == 3 and resumed.order.seen == 6 and resumed.order.peek(2) == unused
