"""The method table (sdft_kit.methods): one entry per method, asked wherever the method matters.

A toy third method is registered here, in the test file alone, and trained through the CLI."""

import json

import pytest
import torch

from sdft_kit import config as config_module
from sdft_kit.cli import main
from sdft_kit.config import Config
from sdft_kit.data import SAMPLE_DATA
from sdft_kit.methods import METHODS, SDFT, SFT, Method, method_of, register
from sdft_kit.update import Objective, StudentScores, demonstration_loss


def own_answer_nll(model, teacher, batch, config) -> Objective:
    """Cross-entropy of the student's own sampled answer (self-training, no teacher): the toy method's loss."""
    return Objective(demonstration_loss(model, batch, config.train.record_topk), None, {"teacher": 0.0, "student": 0.0})


TOY = Method(name="self-nll", title="Self-NLL", batch="rollout", objective=own_answer_nll, uses_teacher=False,
             skips_first=True, loss_name="NLL of the student's own answers",
             description="self-training on the student's own sampled answers (a toy method of the tests)",
             tags=("toy",))


@pytest.fixture
def toy_method():
    register(TOY)
    yield TOY
    del METHODS[TOY.name]
    config_module.METHODS.remove(TOY.name)


def test_the_table_and_the_config_know_the_same_methods():
    assert list(METHODS) == config_module.METHODS == ["sdft", "sft"]
    assert method_of(Config()) is SDFT and method_of(Config().replace(method="sft")) is SFT
    with pytest.raises(ValueError, match="method must be one of sdft, sft; got 'dpo'"):
        Config().replace(method="dpo")


def test_each_method_counts_its_own_tokens():
    from sdft_kit.batch import Completions

    mask = torch.ones(1, 5, dtype=torch.long)
    batch = Completions(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long),
                        torch.zeros(1, 5, dtype=torch.long), mask)
    loss = Config().replace(skip_first=2).loss
    assert SDFT.loss_mask(batch, loss).tolist() == [[0, 0, 1, 1, 1]]  # SDFT skips the first tokens
    assert SFT.loss_mask(batch, loss).tolist() == [[1, 1, 1, 1, 1]]  # SFT counts every demonstration token


def test_a_method_registered_in_a_test_file_trains_through_the_cli(toy_method, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    code = main(["train", "--data", str(SAMPLE_DATA), "--out", str(out), "--method", "self-nll", "--steps", "1",
                 "--batch-size", "2", "--max-new-tokens", "8", "--threads", "1", "--report-to", "none"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "step   1/1" in printed and "mean KL" not in printed  # no teacher: no KL on the step line
    assert "teacher" not in printed.lower()  # no teacher check before a method without a teacher
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["method"] == "self-nll" and record["mean_kl"] is None and record["loss"] > 0
    assert record["sample"]["teacher_logprob"] is None  # the rollout was scored by no teacher
    assert record["seconds"]["rollout"] > 0  # its batch is the student's own rollout, not a demonstration
    card = (out / "adapter" / "README.md").read_text()
    assert "self-training on the student's own sampled answers" in card and "NLL of the student's own answers" in card
    assert "- toy" in card  # its tags
