import subprocess
import sys
from pathlib import Path

import pytest

from sdft_kit.cli import main, make_parser, build_config


def _run(*args):
    return subprocess.run([sys.executable, "-m", "sdft_kit.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("content, expected", [
    ('{"prompt": "hi"}\n', "line 1"),
    ('{"prompt": "hi", "demonstration": "ok"}\n{"prompt": \n', "line 2"),
    ("", "no examples"),
])
def test_bad_data_fails_cleanly_before_training(tmp_path, content, expected):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    result = _run("train", "--data", str(data), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "bad.jsonl" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing was created


def test_missing_file_and_bad_flag_values(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert main(["train", "--data", "x.jsonl", "--out", str(tmp_path / "r"), "--teacher", "oracle"]) == 2
    assert "teacher must be one of" in capsys.readouterr().err


def test_every_config_field_is_a_flag_and_yaml_is_overridden_by_flags(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("train:\n  steps: 7\n  learning_rate: 0.001\nloss:\n  vocab: topk\n")
    args = make_parser().parse_args(["train", "--data", "d", "--out", "o", "--config", str(yaml_file),
                                     "--steps", "9", "--lora-r", "8", "--no-trust-remote-code", "--load-in-4bit"])
    config = build_config(args)
    assert config.train.steps == 9 and config.train.learning_rate == 0.001  # flag beats YAML, YAML beats default
    assert config.loss.vocab == "topk" and config.model.lora_r == 8 and config.model.load_in_4bit is True


def test_train_then_generate_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = _run("train", "--data", "sdft_kit/samples/demo.csv", "--out", str(out), "--steps", "2",
                  "--batch-size", "2", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert "step   2/2" in result.stdout
    for name in ("config.yaml", "metrics.jsonl", "adapter/adapter_config.json", "checkpoint/state.pt"):
        assert (out / name).exists(), name
    again = _run("train", "--data", "sdft_kit/samples/demo.csv", "--out", str(out), "--steps", "2")
    assert again.returncode == 2 and "already holds a run" in again.stderr
    resumed = _run("train", "--data", "sdft_kit/samples/demo.csv", "--out", str(out), "--resume", "--steps", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "step   3/3" in resumed.stdout and "step   1/" not in resumed.stdout
    answer = _run("generate", "--adapter", str(out / "adapter"), "--prompt", "What is 2 plus 2?",
                  "--max-new-tokens", "8")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()


@pytest.mark.parametrize("command", ["train", "demo", "generate", "check-teacher"])
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if command == "train":  # every config field is a flag, new ones included
        assert "--engine" in out and "--release-memory" in out and "--is-cap" in out


def test_help_and_argument_errors_come_back_without_loading_torch():
    """`sdft-kit --help` and a bad flag answer at once: nothing heavy is imported until a command runs."""
    code = ("import sys\nfrom sdft_kit.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['train', '--data', 'x.jsonl']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exit:\n        print('exit', exit.code)\n"
            "print('heavy:', sorted(m for m in ('torch', 'transformers', 'peft', 'trackio', 'gradio') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "usage: sdft-kit" in result.stdout and "--report-to" in result.stdout
    assert result.stdout.count("exit 0") == 2 and "exit 2" in result.stdout  # --out is missing
    assert "heavy: []" in result.stdout


def test_the_package_still_exports_every_name_lazily():
    import sdft_kit

    for name in sdft_kit.__all__:
        assert getattr(sdft_kit, name) is not None, name
    from sdft_kit import Config, Trainer, load_model  # noqa: F401
    with pytest.raises(AttributeError):
        sdft_kit.no_such_name
    # no exported name is also a submodule's: importing the submodule would rebind the package's attribute
    modules = {path.stem for path in Path(sdft_kit.__file__).parent.glob("*.py")}
    assert not modules & set(sdft_kit.__all__), modules & set(sdft_kit.__all__)


def test_columns_and_the_detected_format_in_train_and_inspect(tmp_path):
    """A CSV of question/answer trains with --columns (one SFT step), and train and inspect name the format."""
    qa = "tests/data_files/qa.csv"
    refused = _run("train", "--data", qa, "--out", str(tmp_path / "r0"), "--method", "sft")
    assert refused.returncode == 2 and "--columns prompt=question,demonstration=answer" in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "qa.csv, line 1" in errors[0] and "Traceback" not in refused.stderr
    assert not (tmp_path / "r0").exists()
    trained = _run("train", "--data", qa, "--columns", "prompt=question,demonstration=answer", "--out",
                   str(tmp_path / "r1"), "--method", "sft", "--steps", "1", "--batch-size", "2", "--report-to", "none")
    assert trained.returncode == 0, trained.stderr
    assert f"2 examples from {qa} (format: prompt-demonstration)" in trained.stdout and "step   1/1" in trained.stdout
    shown = _run("inspect", "--data", "tests/data_files/alpaca.json", "--n", "0")
    assert shown.returncode == 0, shown.stderr
    assert ("3 examples from tests/data_files/alpaca.json: Alpaca, 3 records; columns instruction+input -> prompt, "
            "output -> demonstration") in shown.stdout
    for command in (["check-teacher"], ["compare", "--eval", "e.jsonl", "--out", "o"], ["objectives"]):
        args = make_parser().parse_args([*command, "--data", qa, "--columns", "prompt=question,demonstration=answer"])
        assert args.columns == "prompt=question,demonstration=answer"


def test_push_is_private_unless_public_is_asked_for():
    """As the app's push: a new repo is private by default; --public makes it public."""
    args = make_parser().parse_args(["push", "--adapter", "runs/x/adapter", "--repo", "me/x"])
    assert args.private is True
    assert make_parser().parse_args(["push", "--adapter", "a", "--repo", "me/x", "--public"]).private is False
