"""The run directory on disk: checks, lock, sealed checkpoints and their recovery, whole metrics lines."""

import errno
import json
import os
import warnings

import pytest
from safetensors import SafetensorError

from sdft_kit import Config
from sdft_kit.checkpoint import COMPLETE, RunDir, complete_step, disk_error, mark_run, newest_checkpoint, recover
from sdft_kit.records import append_record, read_metrics

DATA = {"sha256": "a" * 64, "examples": 3, "source": "demo.jsonl"}
CONFIG = Config().replace(steps=5)


def _write_checkpoint(run, name, step):
    """A sealed checkpoint folder `name` of `step`, written the way RunDir.save writes them."""
    opened = RunDir(run)
    folder = opened.save("checkpoint", lambda f: (f / "state.pt").write_bytes(b"x" * (100 + step)), step)
    if name != "checkpoint":
        folder.rename(run / name)
    return run / name


def _folders(run):
    return sorted(p.name for p in run.iterdir() if p.name != ".lock")


def test_recover_takes_the_newest_complete_checkpoint_and_puts_it_in_place(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert newest_checkpoint(run) is None and recover(run) is None
    # Killed between the two renames: checkpoint.old (step 1) and checkpoint.tmp (step 2), no checkpoint/.
    _write_checkpoint(run, "checkpoint.old", 1)
    _write_checkpoint(run, "checkpoint.tmp", 2)
    assert newest_checkpoint(run) == (2, run / "checkpoint.tmp")
    assert recover(run) == run / "checkpoint"
    assert _folders(run) == ["checkpoint"] and complete_step(run / "checkpoint") == 2
    # An unsealed (half-written) .tmp is not taken; a truncated file makes a checkpoint incomplete.
    (run / "checkpoint.tmp").mkdir()
    (run / "checkpoint.tmp" / "state.pt").write_bytes(b"partial")
    assert recover(run) == run / "checkpoint" and complete_step(run / "checkpoint") == 2
    (run / "checkpoint").rename(run / "checkpoint.old")
    (run / "checkpoint.tmp").rename(run / "checkpoint")  # checkpoint/ exists but is not complete
    assert complete_step(run / "checkpoint") is None
    with pytest.warns(UserWarning, match="complete.json is missing: the newest checkpoint is damaged; resuming from "
                                         "the previous complete one, of step 2"):
        assert recover(run) == run / "checkpoint" and complete_step(run / "checkpoint") == 2  # .old moved back
    (run / "checkpoint" / "state.pt").write_bytes(b"cut")
    assert complete_step(run / "checkpoint") is None  # sizes are sealed: truncation is seen


def test_checkpoints_of_earlier_versions_are_still_found(tmp_path):
    legacy = tmp_path / "run" / "checkpoint"
    legacy.mkdir(parents=True)
    (legacy / "trainer_state.json").write_text('{"step": 7, "examples_seen": 28, "elapsed_s": 1.0}')
    assert newest_checkpoint(tmp_path / "run") == (7, legacy)


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                                                     'StorageFull, message: "No space left on device" })')])
def test_a_failed_save_leaves_no_partial_folder_and_keeps_the_previous_one(tmp_path, failure):
    run = tmp_path / "run"
    run.mkdir()
    _write_checkpoint(run, "checkpoint", 1)

    def write(folder):
        (folder / "state.pt").write_bytes(b"half")
        raise failure

    with pytest.raises(OSError) as error:
        RunDir(run).save("checkpoint", write, 2)
    message = str(error.value)
    assert message.startswith(f"could not write {run / 'checkpoint.tmp'}: no space left on the device (")
    assert " free on that disk)" in message and "--resume" in message and "\n" not in message
    assert _folders(run) == ["checkpoint"] and complete_step(run / "checkpoint") == 1


def test_disk_error_names_the_path_reason_and_free_space(tmp_path):
    message = str(disk_error(tmp_path / "run" / "metrics.jsonl", OSError(errno.EIO, "Input/output error")))
    assert message.startswith(f"could not write {tmp_path / 'run' / 'metrics.jsonl'}: Input/output error (")
    assert "B free on that disk" in message or "bytes free on that disk" in message


def test_metrics_lines_are_written_whole_even_when_the_disk_fills_mid_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    append_record(path, {"step": 1})
    real_write = os.write

    def full_disk(fd, data):  # writes part of the line, then the disk is full
        if len(data) > 20:
            return real_write(fd, data[:20])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sdft_kit.records.os.write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        append_record(path, {"step": 2, "sample": "x" * 100})
    assert path.read_text() == '{"step": 1}\n'  # cut back: no torn line


def test_a_torn_last_line_is_dropped_with_a_warning_and_a_damaged_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty file reads without a warning
        assert read_metrics(path) == ([], [])
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "sam')
    with pytest.warns(UserWarning, match=r"dropped a torn last line \(line 3"):
        records, ends = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2] and ends == [12, 24]
    path.write_text('{"step": 1}\n{"step": 2, "sam\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a whole JSON record"):
        read_metrics(path)


def test_a_new_run_refuses_a_folder_that_is_not_a_run_and_writes_nothing(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own settings\n")
    with pytest.raises(FileExistsError, match=r"is not empty and is not an sdft-kit run \(it holds config.yaml\)"):
        RunDir.open(mine, CONFIG, DATA, resume=False)
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"]
    assert (mine / "config.yaml").read_text() == "my: own settings\n"
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        RunDir.open(tmp_path / "file", CONFIG, DATA, resume=False)


def test_a_run_with_no_completed_step_can_start_over_one_with_steps_cannot(tmp_path):
    run = tmp_path / "run"
    first = RunDir.open(run, CONFIG, DATA, resume=False)
    first.release()  # killed before its first step: config.yaml and run.json, nothing else
    again = RunDir.open(run, CONFIG.replace(steps=9), DATA, resume=False)  # no dead end: nothing to lose
    assert Config.load(run / "config.yaml").train.steps == 9
    again.append_record({"step": 1})
    again.release()
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        RunDir.open(run, CONFIG, DATA, resume=False)
    resumed = RunDir.open(run, CONFIG.replace(steps=9), DATA, resume=True)  # no checkpoint: from step 0
    assert resumed.checkpoint is None
    with pytest.warns(UserWarning, match=r"the records of step 1 were logged after the newest checkpoint; training "
                                         r"continues from the start \(there is no checkpoint\), so those steps are "
                                         "trained again"):
        resumed.trim_metrics(0)
    assert (run / "metrics.jsonl").read_bytes() == b""
    resumed.release()
    prepared = mark_run(tmp_path / "app-run")  # the app prepares its folders so, with its data file in it
    (prepared / "data.jsonl").write_text("{}\n")
    RunDir.open(prepared, CONFIG, DATA, resume=False).release()


def test_the_lock_keeps_out_a_second_trainer_until_the_first_lets_go(tmp_path):
    run = tmp_path / "run"
    first = RunDir.open(run, CONFIG, DATA, resume=False)
    with pytest.raises(RuntimeError, match="is in use: another Trainer of this process"):
        RunDir.open(run, CONFIG, DATA, resume=True)
    first.release()
    RunDir.open(run, CONFIG, DATA, resume=True).release()


def test_resume_refuses_what_cannot_apply_and_records_what_can(tmp_path):
    run = tmp_path / "run"
    RunDir.open(run, CONFIG, DATA, resume=False).release()
    with pytest.raises(ValueError) as error:
        RunDir.open(run, CONFIG.replace(lora_r=8, learning_rate=1.0, steps=7), DATA, resume=True)
    assert "cannot change lora_r (16 -> 8, --lora-r), learning_rate (0.001 -> 1.0, --learning-rate)" in str(error.value)
    with pytest.raises(ValueError, match=r"the data differs from what this run was trained on \(3 examples from "
                                         r"demo.jsonl\)"):
        RunDir.open(run, CONFIG, {**DATA, "sha256": "b" * 64}, resume=True)
    assert Config.load(run / "config.yaml").train.steps == 5  # nothing recorded from refused attempts
    RunDir.open(run, CONFIG.replace(steps=7, threads=1), DATA, resume=True).release()
    saved = Config.load(run / "config.yaml")
    assert saved.train.steps == 7 and saved.train.threads == 1
    assert json.loads((run / "run.json").read_text())["data"] == DATA


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        RunDir.open(tmp_path / "nothing", CONFIG, DATA, resume=True)
    assert not (tmp_path / "nothing").exists()


def _run_with_checkpoint(tmp_path, step=3, records=None):
    """A run folder trained to `step`: run.json, config.yaml, the records of steps 1..records, a sealed checkpoint."""
    run = tmp_path / "run"
    opened = RunDir.open(run, CONFIG, DATA, resume=False)
    for n in range(1, (records or step) + 1):
        opened.append_record({"step": n})
    opened.release()
    _write_checkpoint(run, "checkpoint", step)
    return run


def test_a_damaged_only_checkpoint_is_refused_naming_the_file_and_nothing_changes(tmp_path):
    run = _run_with_checkpoint(tmp_path)
    state = run / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:50])  # cut in half
    before = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "config.yaml", "run.json")}
    with pytest.raises(ValueError) as error:
        RunDir.open(run, CONFIG.replace(steps=9), DATA, resume=True)
    message = str(error.value)
    assert message.startswith(f"{state} is 50 bytes, not the 103 it was written with: the run's only checkpoint "
                              "is damaged, so --resume cannot continue the run (nothing was changed)")
    assert "\n" not in message
    assert {name: (run / name).read_bytes() for name in before} == before  # the records of steps 1-3 are kept
    assert (run / "checkpoint" / "state.pt").stat().st_size == 50
    (run / "checkpoint" / COMPLETE).unlink()
    with pytest.raises(ValueError, match=f"{run / 'checkpoint' / COMPLETE} is missing: the run's only checkpoint"):
        RunDir.open(run, CONFIG, DATA, resume=True)
    with pytest.raises(FileExistsError, match="already holds a run"):  # nor is it started over
        RunDir.open(run, CONFIG, DATA, resume=False)


def test_a_damaged_newest_checkpoint_falls_back_to_a_complete_previous_one_and_says_so(tmp_path):
    run = _run_with_checkpoint(tmp_path, step=3)
    (run / "checkpoint").rename(run / "newest")
    _write_checkpoint(run, "checkpoint.old", 2)  # as a kill during the last swap can leave it
    (run / "newest").rename(run / "checkpoint")
    (run / "checkpoint" / "state.pt").write_bytes(b"cut")
    with pytest.warns(UserWarning, match=r"state.pt is 3 bytes, not the 103 it was written with: the newest "
                                         r"checkpoint is damaged; resuming from the previous complete one, of step 2"):
        opened = RunDir.open(run, CONFIG, DATA, resume=True)
    assert opened.checkpoint == run / "checkpoint" and complete_step(run / "checkpoint") == 2
    with pytest.warns(UserWarning, match=r"the records of step 3 were logged after the newest checkpoint; training "
                                         r"continues from the checkpoint of step 2"):
        opened.trim_metrics(2)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")[0]] == [1, 2]
    opened.release()


def test_resume_refuses_a_folder_that_only_holds_a_config_yaml_and_leaves_it_untouched(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    own = "# my own notes\ntrain:\n  steps: 5\n"
    (mine / "config.yaml").write_text(own)
    with pytest.raises(FileNotFoundError, match=r"mine is not an sdft-kit run \(it has no run.json\), so there is "
                                                r"nothing to resume \(nothing was written\)"):
        RunDir.open(mine, CONFIG, DATA, resume=True)
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"] and (mine / "config.yaml").read_text() == own


def test_resume_refuses_fewer_steps_than_trained_and_changes_nothing(tmp_path):
    run = _run_with_checkpoint(tmp_path, step=5)
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"--steps 2 is fewer than the 5 steps this run has already trained; a run "
                                         r"cannot be shortened \(nothing was changed\)\. Pass --steps 6 or more"):
        RunDir.open(run, CONFIG.replace(steps=2), DATA, resume=True)
    assert (run / "config.yaml").read_text() == config_before
    RunDir.open(run, CONFIG.replace(steps=5), DATA, resume=True).release()  # as many as trained: allowed


@pytest.mark.parametrize("code, reason", [(errno.EACCES, "permission denied"),
                                          (errno.EROFS, "the file system is read-only")])
def test_a_folder_that_cannot_be_written_is_named_as_such_not_as_a_full_disk(tmp_path, code, reason):
    path = tmp_path / "run" / "checkpoint.tmp"
    (tmp_path / "run").mkdir()
    message = str(disk_error(path, OSError(code, os.strerror(code))))
    assert message == (f"could not write {path}: {reason}; make {tmp_path / 'run'} writable (then continue the run "
                       "with --resume), or choose another --out")
