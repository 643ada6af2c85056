"""Crash-proof CLI runs (issue 18, items 1-10): kill -9, Ctrl-C, a kill between renames, two trainings at once,
a folder that is not a run, resume rules, a full disk, bad configs and adapters, non-finite steps, huge prompts.

The cases that kill, interrupt or race a training run `sdft-kit` in a subprocess; the others call the CLI's
`main()` in-process (the same code path, without paying ~10 s of imports per case). All train a tiny random
model (see conftest.tiny_llama_dir): what is tested is the run machinery, not learning.
"""

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import warnings

import pytest
import torch

from sdft_kit import Config, Trainer, load_examples, load_records
from sdft_kit.checkpoint import complete_step, newest_checkpoint
from sdft_kit.cli import main
from sdft_kit.models import adapter_base
from sdft_kit.trainer import NonFiniteSteps
from sdft_kit.update import sft_objective

DATA = "sdft_kit/samples/demo.jsonl"
SMALL = ["--max-new-tokens", "8", "--batch-size", "2", "--skip-check", "--threads", "1"]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "sdft_kit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _start(*args):
    return subprocess.Popen([sys.executable, "-m", "sdft_kit.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(process, text):
    """Read the process's output until a line holds `text` (the CLI flushes each step's line)."""
    for line in process.stdout:
        if text in line:
            return
    raise AssertionError(f"the run ended before printing {text!r}: {process.stderr.read()}")


def _steps(run):
    return [record["step"] for record in load_records(run)]


def _main_error(capsys, *args):
    """main(args) in-process: exit code 2 and exactly one 'error: ' line on stderr, which is returned."""
    assert main([*map(str, args)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_lock_ctrl_c_and_the_resume_rules(tmp_path, tiny_llama_dir, capsys):
    run = tmp_path / "run"
    # --save-every 1000: only Ctrl-C makes this run's checkpoint.
    first = _start("train", "--data", DATA, "--out", run, "--model", tiny_llama_dir, "--steps", 500,
                   "--save-every", 1000, *SMALL)
    _wait_for(first, "step   2/500")
    assert _main_error(capsys, "train", "--data", DATA, "--out", run, "--model", tiny_llama_dir, "--steps", 3,
                       *SMALL).startswith(f"error: {run} is in use: another sdft-kit process (pid {first.pid})")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 130, err
    step = complete_step(run / "checkpoint")
    assert step is not None and 2 <= step < 500
    assert f"stopped after step {step}/500: the checkpoint of step {step} is in {run / 'checkpoint'}" in err
    assert _steps(run) == list(range(1, step + 1))

    assert "--resume cannot change lora_r (16 -> 8, --lora-r), learning_rate (0.001 -> 1.0" in _main_error(
        capsys, "train", "--data", DATA, "--out", run, "--resume", "--lora-r", 8, "--learning-rate", 1.0)
    assert Config.load(run / "config.yaml").train.steps == 500

    # A torn last line (a write cut short), then resuming with more steps: dropped with a warning; steps recorded.
    metrics = run / "metrics.jsonl"
    with open(metrics, "ab") as f:
        f.write(metrics.read_bytes()[:700])
    resumed = _cli("train", "--data", DATA, "--out", run, "--resume", "--steps", step + 1)
    assert resumed.returncode == 0, resumed.stderr
    assert "warning: " in resumed.stderr and "dropped a torn last line" in resumed.stderr
    assert f"resuming at step {step}\n" in resumed.stdout and f"step {step + 1:>3}/{step + 1}" in resumed.stdout
    assert Config.load(run / "config.yaml").train.steps == step + 1
    assert _steps(run) == list(range(1, step + 2))


def test_kill_9_loses_no_completed_step(tmp_path, tiny_llama_dir, capsys):
    run = tmp_path / "run"
    process = _start("train", "--data", DATA, "--out", run, "--model", tiny_llama_dir, "--steps", 500, *SMALL)
    _wait_for(process, "step   3/500")
    process.kill()
    process.wait()
    step = newest_checkpoint(run)[0]
    assert step >= 3  # a step's line is printed after its checkpoint (save_every defaults to 1)
    assert main(["train", "--data", DATA, "--out", str(run), "--resume", "--steps", str(step + 1)]) == 0
    out = capsys.readouterr().out
    assert f"resuming at step {step}\n" in out and f"step {step:>3}/" not in out
    assert _steps(run) == list(range(1, step + 2))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_kill_between_the_two_renames_of_a_checkpoint_is_recovered(tmp_path, tiny_llama_dir, capsys):
    run = tmp_path / "run"
    # Renames: run.json, config.yaml, step 1's checkpoint.tmp -> checkpoint, then step 2's checkpoint ->
    # checkpoint.old (4th) and checkpoint.tmp -> checkpoint (5th): killed there.
    killed = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
                             "-e", "inject=rename:error=EIO:signal=KILL:when=5", sys.executable, "-m", "sdft_kit.cli",
                             "train", "--data", DATA, "--out", str(run), "--model", str(tiny_llama_dir), "--steps", "3",
                             *SMALL], capture_output=True, text=True, timeout=300)
    if "ptrace" in killed.stderr:
        pytest.skip(f"strace cannot trace here: {killed.stderr.strip()}")
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed.stderr
    assert not (run / "checkpoint").exists()
    assert complete_step(run / "checkpoint.old") == 1 and complete_step(run / "checkpoint.tmp") == 2
    assert main(["train", "--data", DATA, "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming at step 2\n" in out and "step   3/3" in out
    assert complete_step(run / "checkpoint") == 3 and _steps(run) == [1, 2, 3]
    assert not (run / "checkpoint.old").exists() and not (run / "checkpoint.tmp").exists()


def test_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path, tiny_llama_dir, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own settings\n")
    assert f"{mine} is not empty and is not an sdft-kit run (it holds config.yaml)" in _main_error(
        capsys, "train", "--data", DATA, "--out", mine, "--model", tiny_llama_dir, *SMALL)
    assert [p.name for p in mine.iterdir()] == ["config.yaml"]
    assert (mine / "config.yaml").read_text() == "my: own settings\n"
    # --resume too, even when the config.yaml is a valid sdft-kit config (no flag changes it)
    own = (f"# my settings, kept here\nmodel:\n  model: {tiny_llama_dir}\ntrain:\n  method: sft\n  steps: 1\n"
           "  threads: 1\n")
    (mine / "config.yaml").write_text(own)
    assert _main_error(capsys, "train", "--data", DATA, "--out", mine, "--resume") == (f"error: {mine} is not an sdft-kit run (it has no run.json), so there is nothing "
                                   "to resume (nothing was written); pass the folder of a run, or start a new run in "
                                   "a new or empty --out")
    assert [p.name for p in mine.iterdir()] == ["config.yaml"] and (mine / "config.yaml").read_text() == own


def _unshare_works():
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -Urm` and tmpfs mounts (user namespaces)")
def test_a_full_disk_gives_one_line_and_leaves_nothing_torn(tmp_path, tiny_llama_dir):
    """A real full disk: small tmpfs mounts in a private mount namespace (no root needed where user
    namespaces are allowed). 64 KiB fill up with metrics lines; 200 KiB fit a line but not a checkpoint."""
    python = f"{sys.executable} -m sdft_kit.cli train --data {DATA} --model {tiny_llama_dir} --steps 500 " + " ".join(SMALL)
    script = ""
    for case, size, extra in (("lines", "64k", "--save-every 1000"), ("checkpoint", "200k", "")):
        mount = tmp_path / f"mnt-{case}"
        mount.mkdir()
        script += (f"mount -t tmpfs -o size={size} tmpfs {mount} || exit 99\n"
                   f"{python} --out {mount}/run {extra} > {tmp_path}/{case}.out 2> {tmp_path}/{case}.err\n"
                   f"echo $? > {tmp_path}/{case}.rc\n"
                   f"cp -a {mount}/run {tmp_path}/{case}-run\n")
    subprocess.run(["unshare", "-Urm", "sh", "-c", script], check=True, timeout=600)
    for case, path in (("lines", "metrics.jsonl"), ("checkpoint", "checkpoint.tmp")):
        stderr = (tmp_path / f"{case}.err").read_text()
        assert (tmp_path / f"{case}.rc").read_text().strip() == "2", stderr
        assert "Traceback" not in stderr
        assert f"error: could not write {tmp_path}/mnt-{case}/run/{path}: no space left on the device (" in stderr
        assert " free on that disk); free some space, then continue the run with --resume" in stderr
        copy = tmp_path / f"{case}-run"
        assert not (copy / "checkpoint.tmp").exists()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every line whole: no torn line to warn about
            steps = _steps(copy)
        assert steps == list(range(1, len(steps) + 1)) and steps
    # The run that could not write its first checkpoint resumes on a disk with room, from the start.
    assert main(["train", "--data", DATA, "--out", str(tmp_path / "checkpoint-run"), "--resume", "--steps", "2"]) == 0
    assert _steps(tmp_path / "checkpoint-run") == [1, 2]


def test_config_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 2\n lr: 3\n")
    assert _main_error(capsys, "train", "--data", DATA, "--out", tmp_path / "run", "--config", bad).startswith(
        f"error: {bad}, line 3, column 2: not valid YAML")
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  steps: two\n")
    section = tmp_path / "section.yaml"
    section.write_text("train: 5\n")
    for args, expected in ((["--config", typo], f"error: {typo}: steps must be a whole number; got 'two'"),
                           (["--config", section], f"error: {section}: section 'train' must be a mapping of fields"),
                           (["--lora-alpha", "-5"], "error: lora_alpha must be >= 1; got -5"),
                           (["--learning-rate", "inf"], "error: learning_rate must be a finite number; got inf (set "
                                                        "it with --learning-rate"),
                           (["--learning-rate", "nan"], "error: learning_rate must be a finite number; got nan")):
        assert main(["train", "--data", DATA, "--out", str(tmp_path / "run"), *map(str, args)]) == 2
        assert capsys.readouterr().err.startswith(expected)
    assert not (tmp_path / "run").exists()


def test_a_prompt_longer_than_the_context_is_refused_before_training(tmp_path, tiny_llama_dir, capsys):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "Hi?", "demonstration": "Hello."}) + "\n"
                    + json.dumps({"prompt": "word " * 40_000, "demonstration": "Fine."}) + "\n")  # 200k characters
    error = _main_error(capsys, "train", "--data", data, "--out", tmp_path / "run", "--model", tiny_llama_dir, *SMALL)
    for part in ("long.jsonl:2: the student prompt is ", "more than the model's context of 512 tokens",
                 "Shorten or remove this record"):
        assert part in error, error
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_demonstration_too_long_for_the_teacher_check_skips_the_check_not_the_run(tmp_path, tiny_llama_dir, capsys):
    data = tmp_path / "long_demo.jsonl"  # the teacher prompt holds the demonstration: ~330 tokens, with room for 8
    data.write_text(json.dumps({"prompt": "Hi?", "demonstration": "Hello."}) + "\n"
                    + json.dumps({"prompt": "Count.", "demonstration": "word " * 300}) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--model", str(tiny_llama_dir), "--steps", "1",
                 "--max-new-tokens", "8", "--batch-size", "2", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: the teacher check was skipped: \S*long_demo\.jsonl:2: the teacher prompt \(\w+\) is "
                     r"\d+ tokens; with 30\d for the answer that is more than the model's context of 512 tokens", err), err
    assert _steps(run) == [1] and not (run / "teacher_check.json").exists()


@pytest.fixture
def tiny_adapter(tmp_path, tiny_llama_dir):
    """The adapter of a one-step run on the tiny model, copied away from its run (no config.yaml beside it)."""
    config = Config().replace(model=str(tiny_llama_dir), method="sft", steps=1, batch_size=2, threads=1)
    Trainer(config, load_examples(DATA), tmp_path / "run").train(progress=False)
    return shutil.copytree(tmp_path / "run" / "adapter", tmp_path / "moved" / "adapter")


def test_generate_finds_a_moved_adapters_base_and_names_a_damaged_file(tmp_path, tiny_adapter, capsys):
    # On the tiny base it records, not the embedded model (whose shapes would not fit).
    assert main(["generate", "--adapter", str(tiny_adapter), "--prompt", "Hi?", "--max-new-tokens", "4"]) == 0
    weights = tiny_adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    error = _main_error(capsys, "generate", "--adapter", tiny_adapter, "--prompt", "Hi?")
    assert f"{weights} is damaged (" in error and "copy the whole adapter folder again" in error


def test_generate_errors_for_missing_files_and_another_base(tiny_adapter, capsys):
    def error(*args):
        return _main_error(capsys, "generate", "--adapter", tiny_adapter, "--prompt", "Hi?", *args)

    assert error("--model", "embedded").startswith(
        f"error: {tiny_adapter} was trained on another base model than 'embedded' (tensor shapes differ); pass its "
        f"base with --model (its adapter_config.json names '{adapter_base(tiny_adapter)}')")
    (tiny_adapter / "adapter_model.safetensors").unlink()
    assert error() == (f"error: {tiny_adapter / 'adapter_model.safetensors'} is missing (the adapter's weights); copy "
                       "the whole adapter folder again, or use the run's checkpoint/adapter")
    (tiny_adapter / "adapter_config.json").write_text("{not json")
    assert error().startswith(f"error: {tiny_adapter / 'adapter_config.json'} is damaged (")
    (tiny_adapter / "adapter_config.json").unlink()
    assert "holds no adapter (adapter_config.json is missing)" in error()


# -- guards inside training (in-process) --------------------------------------------------------
def _tiny_config(tiny_llama_dir, **overrides):
    return Config().replace(model=str(tiny_llama_dir), method="sft", batch_size=2, threads=1, **overrides)


def test_non_finite_steps_are_skipped_then_stop_training_keeping_the_last_good_checkpoint(tmp_path, tiny_llama_dir):
    # chunk_size 0: one objective call per step
    trainer = Trainer(_tiny_config(tiny_llama_dir, steps=10, chunk_size=0), load_examples(DATA), tmp_path / "run")
    calls, poisoned = [], {2}

    def objective(model, teacher, batch, config):  # SFT's, with a NaN loss on the calls in `poisoned`
        out = sft_objective(model, teacher, batch, config)
        calls.append(len(calls) + 1)
        if calls[-1] in poisoned:
            out.student.loss = out.student.loss * float("nan")
        return out

    trainer.method = dataclasses.replace(trainer.method, objective=objective)
    steps = trainer.steps()
    with pytest.warns(RuntimeWarning, match=r"step 2: the loss or the gradients were not finite; skipped it"):
        records = [next(steps) for _ in range(3)]
    assert [r["step"] for r in records] == [1, 2, 3] and len(calls) == 4  # call 2 skipped, data moved on
    weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    poisoned.update(range(5, 100))  # from now on every step is non-finite
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteSteps, match=r"not finite 3 times in a row\. The "
                                                                           r"weights after step 3 are kept"):
        next(steps)
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, weights[name], rtol=0, atol=0)  # skipped steps changed nothing
    assert complete_step(tmp_path / "run" / "checkpoint") == 3 and _steps(tmp_path / "run") == [1, 2, 3]


def test_killed_before_the_first_checkpoint_is_no_dead_end(tmp_path, tiny_llama_dir):
    config = _tiny_config(tiny_llama_dir, steps=3, save_every=1000)
    for record in Trainer(config, load_examples(DATA), tmp_path / "run").steps():
        if record["step"] == 2:
            break  # the generator is closed at its yield: no checkpoint is written, as if killed there
    assert newest_checkpoint(tmp_path / "run") is None and _steps(tmp_path / "run") == [1, 2]
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        Trainer(config, load_examples(DATA), tmp_path / "run")
    with pytest.warns(UserWarning, match=r"the records of steps 1-2 were logged after the newest checkpoint; training "
                                         r"continues from the start \(there is no checkpoint\)"):  # said, not silent
        resumed = Trainer(config, load_examples(DATA), tmp_path / "run", resume=True)
    assert resumed.step == 0 and _steps(tmp_path / "run") == []  # starts over; the logged steps are redone
    assert [r["step"] for r in resumed.train(progress=False)] == [1, 2, 3]
    assert complete_step(tmp_path / "run" / "checkpoint") == 3


# -- resuming a run that cannot go on as asked (in-process) --------------------------------------
def test_resume_refuses_fewer_steps_and_a_damaged_only_checkpoint_keeping_every_record(tmp_path, tiny_llama_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", DATA, "--out", str(run), "--model", str(tiny_llama_dir), "--steps", "3",
                 "--method", "sft", *SMALL]) == 0
    kept = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "config.yaml", "adapter/README.md")}
    assert _main_error(capsys, "train", "--data", DATA, "--out", run, "--resume", "--steps", 2) == (
        f"error: {run}: --steps 2 is fewer than the 3 steps this run has already trained; a run cannot be shortened "
        "(nothing was changed). Pass --steps 4 or more to train on, or use the run as it is")
    # state.pt cut in half: no complete checkpoint is left to resume from
    state = run / "checkpoint" / "state.pt"
    size = state.stat().st_size
    state.write_bytes(state.read_bytes()[:size // 2])
    assert _main_error(capsys, "train", "--data", DATA, "--out", run, "--resume", "--steps", 5) == (
        f"error: {state} is {size // 2} bytes, not the {size} it was written with: the run's only checkpoint is "
        "damaged, so --resume cannot continue the run (nothing was changed). Put back an intact copy of that folder, "
        "or start a new run in another --out")
    assert {name: (run / name).read_bytes() for name in kept} == kept  # the records of steps 1-3 are all there
    assert _steps(run) == [1, 2, 3]


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -Urm` and bind mounts (user namespaces)")
def test_a_read_only_run_folder_says_so_in_one_line(tmp_path, tiny_llama_dir):
    run = tmp_path / "run"
    assert main(["train", "--data", DATA, "--out", str(run), "--model", str(tiny_llama_dir), "--steps", "1",
                 "--method", "sft", *SMALL]) == 0
    before = (run / "metrics.jsonl").read_bytes()
    # The run's folder mounted read-only over itself, in a private mount namespace, then resumed there.
    script = (f"mount --bind {run} {run} && mount -o remount,bind,ro {run} || exit 99\n"
              f"{sys.executable} -m sdft_kit.cli train --data {DATA} --out {run} --resume --steps 2\n")
    resumed = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 2, resumed.stderr
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: could not write {run / '.lock'}: the file system is read-only; make {run} writable "
                      "(then continue the run with --resume), or choose another --out"], resumed.stderr
    assert "Traceback" not in resumed.stderr and "free some space" not in resumed.stderr
    assert (run / "metrics.jsonl").read_bytes() == before
