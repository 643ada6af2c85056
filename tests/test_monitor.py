"""The forgetting monitor (monitor.py): the keep rule on hand-made scores, the held-out split, scores that mean
something on the embedded model, a seeded run left exactly as it was, kept checkpoints through a crash and a
kill -9, and two processes. The run machinery is tested on a tiny random model (conftest.tiny_llama_dir)."""

import random
import subprocess
import sys

import pytest
import torch

from sdft_kit import Config, Trainer, load_examples, load_records
from sdft_kit import monitor as monitor_module
from sdft_kit.checkpoint import RunDir, complete_step
from sdft_kit.data import DataError
from sdft_kit.driver import step_line, train
from sdft_kit.monitor import KEPT, beats, chosen, evaluations_of, front, load_probes

DATA = "sdft_kit/samples/demo.jsonl"
TINY = dict(max_new_tokens=8, batch_size=2, threads=1, report_to="none", seed=3)


def scores(step, new, prior):
    return {"step": step, "new_task": new, "prior_skills": prior}


def steps_of(evaluations):
    return [e["step"] for e in evaluations]


def test_the_keep_rule_on_hand_made_scores():
    evaluations = [scores(0, 0.10, 1.00), scores(1, 0.20, 0.95), scores(2, 0.15, 0.90), scores(3, 0.30, 0.95),
                   scores(4, 0.25, 0.80), scores(5, 0.40, 0.70), scores(6, 0.40, 0.70)]
    assert steps_of(front(evaluations)) == [0, 3, 6]  # 1 and 2 beaten by 3, 4 by 3, 5 by its equal, later 6
    assert beats(evaluations[6], evaluations[5]) and not beats(evaluations[5], evaluations[6])
    assert not beats(evaluations[0], evaluations[0])
    assert chosen(evaluations, 0.05)["step"] == 3  # the best new task within 5 points of the start's prior skills
    assert chosen(evaluations, 0.30)["step"] == 6
    assert chosen(evaluations, 0.0)["step"] == 0  # every trained step lost prior skills
    only_worse = [scores(0, 0.5, 0.9), scores(5, 0.4, 0.8)]
    assert steps_of(front(only_worse)) == [0] and chosen(only_worse, 0.05)["step"] == 0
    assert chosen([], 0.05) is None
    assert steps_of(evaluations_of([{"step": 1, "monitor_start": evaluations[0], "monitor": evaluations[1]},
                                    {"step": 2}, {"step": 3, "monitor": evaluations[3]}])) == [0, 1, 3]


def test_held_out_records_leave_the_training_data(tmp_path):
    examples = load_examples(DATA)
    config = Config().replace(monitor_every=5, monitor_holdout=4, seed=7)
    train_part, probes = load_probes(config, examples)
    assert len(train_part) == len(examples) - 4 and len(probes.holdout) == 4 and probes.measure == "ROUGE-L F1"
    assert not {ex.prompt for ex in probes.holdout} & {ex.prompt for ex in train_part}
    assert [ex.prompt for ex in train_part] == [ex.prompt for ex in examples if ex not in probes.holdout]  # order kept
    assert load_probes(config, examples)[1].holdout == probes.holdout  # seeded: every process, every resume
    assert load_probes(config.replace(seed=8), examples)[1].holdout != probes.holdout
    assert len(probes.prior) == 31  # the bundled probe, all of it under the default limit (32)
    assert load_probes(Config(), examples) == (examples, None)  # off: nothing held out, nothing loaded

    items = tmp_path / "new.jsonl"
    items.write_text('{"prompt": "What is 7 plus 5?", "answers": ["12"]}\n' * 3)
    kept, probes = load_probes(config.replace(monitor_new_task=str(items), monitor_limit=2), examples)
    assert kept == examples and len(probes.new_task) == 2 and len(probes.prior) == 2 and probes.measure == "accuracy"
    with pytest.raises(DataError, match="holds out 30 records .* the data has 24: lower --monitor-holdout"):
        load_probes(config.replace(monitor_holdout=30), examples)
    with pytest.raises(DataError, match="monitor_probe 'nope.jsonl' is neither a bundled task .*--monitor-probe"):
        load_probes(config.replace(monitor_probe="nope.jsonl"), examples)
    with pytest.raises(ValueError, match="keep_checkpoints 'tradeoff' .* set monitor_every"):
        Config().replace(keep_checkpoints="tradeoff")


def test_a_bad_probe_is_one_line_before_the_model_loads(tmp_path, capsys):
    from sdft_kit.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", DATA, "--out", str(out), "--monitor-every", "2", "--monitor-probe", "nope.jsonl",
                 "--report-to", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "--monitor-probe" in err and "Traceback" not in err
    assert not out.exists()  # nothing written


def test_scores_on_the_embedded_model_fall_when_the_model_is_damaged(lora_model, one_thread):
    from sdft_kit.generation import generate_text
    from sdft_kit.demos import student_prompt

    model, tokenizer = lora_model
    config = Config().replace(monitor_every=1, monitor_holdout=2, monitor_limit=6)
    _, probes = load_probes(config, load_examples(DATA))
    base = monitor_module.score(model, tokenizer, probes, max_new_tokens=16)
    assert base["prior_skills"] == 1.0 and base["n_prior"] == 6 and base["n_new"] == 2  # the probe: what the base knows
    assert 0.1 < base["new_task"] < 1.0 and base["seconds"] > 0
    prompts = [student_prompt(tokenizer, ex) for ex in probes.holdout]  # unmerged decoding = the rollout's greedy text
    assert monitor_module.greedy_answers(model, tokenizer, prompts, 16) == generate_text(model, tokenizer, prompts, 16)

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    damaged = monitor_module.score(model, tokenizer, probes, max_new_tokens=16)
    assert damaged["prior_skills"] <= 0.5 and damaged["new_task"] < base["new_task"] / 2


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_seeded_run_is_the_same_with_the_monitor_on_or_off(tmp_path, tiny_llama_dir, monkeypatch):
    score = monitor_module.score

    def drawing_score(*args):  # a scorer that draws random numbers, as a sampled probe would
        torch.rand(100), random.random()
        return score(*args)

    monkeypatch.setattr(monitor_module, "score", drawing_score)
    examples = load_examples(DATA)
    probe = tmp_path / "probe.jsonl"  # answers written by generation as well as picked options
    probe.write_text('{"prompt": "What is 7 plus 5?", "answers": ["12"]}\n'
                     '{"prompt": "Capital of France?", "answers": ["Paris"], "kind": "choice", '
                     '"choices": ["Paris", "Rome"]}\n')
    on = Config().replace(model=str(tiny_llama_dir), steps=4, monitor_every=2, monitor_holdout=3,
                          monitor_probe=str(probe), **TINY)
    trained_on, _ = load_probes(on, examples)
    runs = {}
    for name, config, data in (("on", on, examples), ("off", on.replace(monitor_every=0), trained_on)):
        trainer = Trainer(config, data)
        runs[name] = (train(trainer, progress=False).records, _weights(trainer.model), trainer)
    (on_records, on_weights, on_trainer), (off_records, off_weights, _) = runs["on"], runs["off"]
    assert on_trainer.examples == trained_on
    for a, b in zip(on_records, off_records, strict=True):
        assert (a["loss"], a["grad_norm"], a["mean_kl"], a["sample"]["token_ids"]) == \
               (b["loss"], b["grad_norm"], b["mean_kl"], b["sample"]["token_ids"])
    assert all(torch.equal(on_weights[k], off_weights[k]) for k in off_weights)  # base and LoRA, bit for bit
    assert [sorted(k for k in r if k.startswith("monitor")) for r in on_records] == \
           [["monitor_start"], ["monitor"], [], ["monitor"]]
    assert not any(k.startswith("monitor") for r in off_records for k in r)
    first = on_records[0]["monitor_start"]
    assert (first["step"], first["n_prior"], first["n_new"], first["new_task_measure"]) == (0, 2, 3, "ROUGE-L F1")
    lines = step_line(on_records[0]).splitlines()
    assert lines[0].startswith("step   0/4  prior skills ") and lines[1].startswith("step   1/4  loss ")
    assert "prior skills" in step_line(on_records[1]) and "prior skills" not in step_line(on_records[2])


class Scripted:
    """Monitor scores by the trainer's step (score() is replaced: the keep rule, not the scorer, is tested)."""

    def __init__(self, table):
        self.table, self.trainer = table, None

    def __call__(self, model, tokenizer, probes, max_new_tokens):
        new, prior = self.table[self.trainer.step]
        return {"prior_skills": prior, "new_task": new, "new_task_measure": "accuracy", "n_prior": 1, "n_new": 1,
                "seconds": 0.0}


def _kept(run):
    folders = sorted((run / KEPT).iterdir(), key=lambda p: int(p.name.removeprefix("step-")))
    assert all(complete_step(folder) == int(folder.name.removeprefix("step-")) for folder in folders)  # whole
    assert all((folder / "adapter" / "adapter_model.safetensors").is_file() for folder in folders)
    return [int(folder.name.removeprefix("step-")) for folder in folders]


def test_tradeoff_keeps_the_front_through_a_crash_and_a_resume(tmp_path, tiny_llama_dir, monkeypatch):
    scripted = Scripted({0: (0.10, 1.00), 1: (0.20, 0.95), 2: (0.15, 0.90), 3: (0.30, 0.95), 4: (0.25, 0.80),
                         5: (0.40, 0.70), 6: (0.40, 0.70)})
    monkeypatch.setattr(monitor_module, "score", scripted)
    append = RunDir.append_record

    def killed_at_step_3(self, record):  # after step 3's adapter is kept, before its record: a kill -9 there
        if record["step"] == 3:
            raise KeyboardInterrupt
        append(self, record)

    monkeypatch.setattr(RunDir, "append_record", killed_at_step_3)
    run, examples = tmp_path / "run", load_examples(DATA)
    config = Config().replace(model=str(tiny_llama_dir), steps=6, monitor_every=1, save_every=2,
                              keep_checkpoints="tradeoff", monitor_tolerance=0.05, **TINY)
    scripted.trainer = trainer = Trainer(config, examples, run)
    with pytest.raises(KeyboardInterrupt):
        train(trainer, progress=False)
    trainer.close()
    # Checkpoint at step 2. Step 3 beats step 1, but is not durable: step 1's adapter stays.
    assert _kept(run) == [0, 1, 3]

    monkeypatch.setattr(RunDir, "append_record", append)
    scripted.trainer = trainer = Trainer(config, examples, run, resume=True)
    assert trainer.step == 2
    records = train(trainer, progress=False).records
    trainer.close()
    assert [r["step"] for r in load_records(run)] == [1, 2, 3, 4, 5, 6] and records[0]["step"] == 3
    assert steps_of(evaluations_of(load_records(run))) == [0, 1, 2, 3, 4, 5, 6]
    assert _kept(run) == steps_of(front(evaluations_of(load_records(run)))) == [0, 3, 6]
    card = (run / "adapter" / "README.md").read_text()
    assert "## Forgetting monitor" in card and "**Chosen: step 3** (`checkpoints/step-3/adapter`)" in card
    assert "| 6 | 0.400 | 70.0% | yes | `checkpoints/step-6/adapter` |" in card
    assert "| 1 | 0.200 | 95.0% |  |  |" in card


def test_a_killed_cli_run_resumes_with_every_front_checkpoint(tmp_path, tiny_llama_dir):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "sdft_kit.cli", "train", "--data", DATA, "--out", str(run), "--model",
            str(tiny_llama_dir), "--steps", "5", "--max-new-tokens", "8", "--batch-size", "2", "--skip-check",
            "--threads", "1", "--report-to", "none", "--monitor-every", "1", "--monitor-limit", "4",
            "--monitor-holdout", "3", "--keep-checkpoints", "tradeoff"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = []
    for line in process.stdout:
        printed.append(line)
        if line.startswith("step   3/5"):
            process.kill()
            break
    process.wait(timeout=300)
    steps = [line for line in printed if line.startswith("step ")]  # (the engine line may come first)
    assert steps[0].startswith("step   0/5  prior skills "), "".join(printed)
    resumed = subprocess.run([*args[:8], "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = load_records(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    evaluations = evaluations_of(records)
    assert steps_of(evaluations) == [0, 1, 2, 3, 4, 5]
    assert _kept(run) == steps_of(front(evaluations))
    card = (run / "adapter" / "README.md").read_text()
    assert f"**Chosen: step {chosen(evaluations, 0.05)['step']}**" in card


def test_two_processes_train_as_one_with_the_monitor_on_process_0(tmp_path, tiny_llama_dir):
    pytest.importorskip("accelerate")
    from test_distributed import ENV, launch

    common = ["--data", DATA, "--model", str(tiny_llama_dir), "--method", "sft", "--steps", "4", "--skip-check",
              "--threads", "1", "--seed", "5", "--report-to", "none", "--monitor-every", "2", "--monitor-limit", "4",
              "--monitor-holdout", "4", "--max-new-tokens", "8"]
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "sdft_kit.cli", "train", "--out", str(one), "--batch-size", "4",
                             *common], capture_output=True, text=True, env=ENV, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(launch("-m", "sdft_kit.cli", "train", "--out", str(two), "--batch-size", "2", *common),
                            capture_output=True, text=True, env=ENV, timeout=600)
    assert double.returncode == 0, double.stdout[-2000:] + double.stderr[-3000:]
    a, b = load_records(one), load_records(two)
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4, abs=1e-5)
    assert all(r["processes"] == 2 for r in b)
    # The same weights at each scored step: the same scores (process 0 alone scored).
    assert [(e["step"], e["prior_skills"]) for e in evaluations_of(b)] == \
           [(e["step"], e["prior_skills"]) for e in evaluations_of(a)]
    assert [e["new_task"] for e in evaluations_of(b)] == pytest.approx([e["new_task"] for e in evaluations_of(a)])
    assert double.stdout.count("step   0/4  prior skills") == 1
