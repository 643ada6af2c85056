"""The app's trainings (sdft_kit.app_runs): runs owned by a login or a browser, one scheduler with a bounded
queue, the status and the board every visitor sees. No gradio, no browser: the scheduler is called directly.

They train a tiny random Llama (conftest.tiny_llama_dir: a step takes milliseconds): these are tests of the
machinery; test_app_e2e.py trains the embedded model through the page."""

import json
import time

import pytest

from sdft_kit import app_data
from sdft_kit import app_logic as logic
from sdft_kit.app_runs import APP_RUN, BusyError, Trainings, lr_text, owner_key, run_name, tracker_project
from sdft_kit.config import Config
from sdft_kit.data import SAMPLES_DIR, DataError, load_examples

SAMPLE = SAMPLES_DIR / "demo.jsonl"
TINY = dict(steps=2, batch_size=2, max_new_tokens=8, threads=1, teacher="base", report_to="none")
SFT = dict(TINY, method="sft")


@pytest.fixture
def examples():
    return app_data.parse_upload(SAMPLE.read_bytes())


def _wait_for(condition, timeout=240):
    start = time.time()
    while not condition():
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.05)


def test_owners_run_names_and_tracker_projects():
    assert owner_key("ann", "cookie-1") == "login:ann"  # a login owns the runs, whatever the browser
    browser = owner_key(None, "cookie-1")
    assert browser.startswith("browser:") and "cookie-1" not in browser  # the cookie is a secret: stored hashed
    assert browser == owner_key(None, "cookie-1") != owner_key(None, "cookie-2")
    assert owner_key(None, None, "abc") == "session:abc"
    assert tracker_project("login:ann") == "sdft-kit-ann" and tracker_project("login:a b/c") == "sdft-kit-a-b-c"
    assert tracker_project(browser) == "sdft-kit"
    assert [lr_text(x) for x in (1e-3, 5e-4, 2.5e-4, 0.01)] == ["1e-3", "5e-4", "2.5e-4", "1e-2"]
    now = time.mktime((2026, 12, 4, 14, 25, 1, 0, 0, -1))
    assert run_name(Config(), now) == "sdft-system-lr1e-3-142501"
    assert run_name(Config().replace(template="paper", learning_rate=5e-4), now) == "sdft-paper-lr5e-4-142501"
    assert run_name(Config().replace(template="Q {prompt} A {demonstration}"), now).startswith("sdft-custom-")
    assert run_name(Config().replace(method="sft"), now) == "sft-lr1e-3-142501"  # no teacher, no template


def test_the_queue_runs_one_at_a_time_shows_positions_cancels_and_refuses_beyond_its_bound(tmp_path, examples,
                                                                                           tiny_llama_dir):
    trainings = Trainings(tmp_path, concurrency=1, max_waiting=1)
    long = Config().replace(**{**SFT, "model": str(tiny_llama_dir), "steps": 5000})
    short = Config().replace(**{**SFT, "model": str(tiny_llama_dir)})
    assert trainings.board() == "**Server:** nothing is training; Start trains at once (1 at a time, up to 1 waiting)."
    ann = trainings.start("login:ann", long, examples)
    _wait_for(lambda: trainings.records("login:ann"))
    bob = trainings.start("login:bob", short, examples)
    assert bob.state == "waiting" and trainings.position(bob) == 1
    status = trainings.status("login:bob")
    assert status.text.startswith("waiting: #1 in the queue (training now: step ") and status.run_dir == bob.run_dir
    board = trainings.board("login:bob")  # everybody sees the server's state; only their own runs are marked
    assert f"training now: `{ann.name}`, step " in board and "left" in board and f"1. `{bob.name}` (yours)" in board
    assert "(yours)" not in trainings.board("login:cat").replace(f"`{bob.name}` (yours)", "")
    with pytest.raises(BusyError, match=r"The queue is full \(1 runs waiting for 1 training slot"):
        trainings.start("login:cat", short, examples)
    with pytest.raises(BusyError, match=f"You already have {ann.name} training"):
        trainings.start("login:ann", short, examples)
    assert not any(p.name.startswith("sft-") and p != ann.run_dir and p != bob.run_dir for p in tmp_path.iterdir())

    assert trainings.stop("login:bob") == f"Cancelled {bob.name} (it had not started)."
    assert bob.state == "cancelled" and not bob.run_dir.exists()  # a run that never trained keeps no data copy
    assert "cancelled before it started" in trainings.status("login:bob").text
    bob = trainings.start("login:bob", short, examples)  # queued again; it starts when Ann's run stops
    assert trainings.stop("login:cat") == "Nothing of yours is training or waiting."
    assert trainings.stop("login:ann").startswith(f"Stopping {ann.name} after the current step")
    assert trainings.wait(timeout=120)
    assert ann.state == "stopped" and 1 <= ann.step < 5000 and bob.state == "done" and bob.step == 2
    assert trainings.status("login:ann").text.endswith("stopped (Resume continues from the checkpoint)")
    # each owner lists its own runs, from the folders' app_run.json: a restarted server too
    again = Trainings(tmp_path)
    assert again.run_names("login:ann") == [ann.name] and again.run_names("login:bob") == [bob.name]
    assert again.run_names("login:cat") == [] and again.status("login:ann").text == "no training yet"
    note = json.loads((ann.run_dir / APP_RUN).read_text())
    assert note["owner"] == "login:ann" and note["tracker_project"] == "sdft-kit-ann" and note["tracker"] == "none"
    for refused in (lambda: again.run_path("login:bob", ann.name), lambda: again.run_path("login:ann", "../x"),
                    lambda: again.resume("login:bob", ann.name, steps=5)):
        with pytest.raises(ValueError, match="pick one of your runs"):
            refused()


def test_two_slots_train_two_runs_at_once(tmp_path, examples, tiny_llama_dir):
    trainings = Trainings(tmp_path, concurrency=2, max_waiting=0)
    config = Config().replace(**{**SFT, "model": str(tiny_llama_dir), "steps": 200})
    ann, bob = trainings.start("login:ann", config, examples), trainings.start("login:bob", config, examples)
    _wait_for(lambda: ann.records and bob.records)  # both step before either ends
    assert ann.state == bob.state == "training" and trainings.waiting == []
    with pytest.raises(BusyError, match="The queue is full"):
        trainings.start("login:cat", config, examples)
    trainings.stop("login:ann"), trainings.stop("login:bob")
    assert trainings.wait(timeout=60) and ann.state == bob.state == "stopped"


def test_a_run_checks_every_template_stops_resumes_and_keeps_its_verdict(tmp_path, examples, tiny_llama_dir):
    trainings = Trainings(tmp_path / "runs")
    tiny = dict(TINY, model=str(tiny_llama_dir), template="paper")
    job = trainings.start("browser:x", Config().replace(**{**tiny, "steps": 500}), examples)
    assert job.name.startswith("sdft-paper-lr1e-3-")
    seen = set()
    _wait_for(lambda: seen.add(trainings.status("browser:x").state) or job.records)
    assert {"loading", "checking", "training"} <= seen, seen  # the phases, as the page shows them
    trainings.stop("browser:x")
    trainings.wait("browser:x")
    status = trainings.status("browser:x", logic.check_text)
    assert status.state == "stopped" and 1 <= status.step < 500, status.text
    assert f"step {status.step}/500, elapsed " in status.text and "remaining" not in status.text
    # the check compared every named template with the run's own, and says so in words
    check = json.loads((job.run_dir / "teacher_check.json").read_text())
    assert [r["template"] for r in check["results"]] == ["paper", "plain", "system"]
    assert status.teacher_check.startswith(f"**Teacher check: {check['verdict'].upper()}** with the template "
                                           f"'{check['best']}', best of 3 (8 records")
    assert "--" not in status.teacher_check  # words, not CLI flags
    if check["best"] != "paper":  # the advice names the better template and one click takes it
        assert logic.advice_for(job.check, job.config)["template"] == check["best"]

    stopped_at = status.step
    trainings.resume("browser:x", job.name, steps=stopped_at + 1)
    trainings.wait("browser:x")
    status = trainings.status("browser:x", logic.check_text)
    assert status.state == "done" and status.text.startswith(f"step {stopped_at + 1}/{stopped_at + 1}, elapsed ")
    assert status.teacher_check.startswith("**Teacher check: ")  # the verdict stays after Resume
    assert [r["step"] for r in trainings.records("browser:x")] == list(range(1, stopped_at + 2))
    assert "loss" in status.text and "mean KL" in status.text

    # a second run on the same model and data reuses the check (it is deterministic) instead of waiting for it
    second = trainings.start("browser:x", Config().replace(**{**tiny, "steps": 1}), examples)
    trainings.wait("browser:x")
    assert second.state == "done" and f"Reused from {job.name}" in trainings.status("browser:x", logic.check_text) \
        .teacher_check
    assert json.loads((second.run_dir / "teacher_check.json").read_text())["results"] == check["results"]


def test_a_failed_start_is_reported_frees_the_slot_and_leaves_no_copy_of_the_data(tmp_path, examples):
    trainings = Trainings(tmp_path)
    trainings.start("login:ann", Config().replace(model=str(tmp_path / "no-such-model"), **TINY), examples)
    trainings.wait()
    status = trainings.status("login:ann")
    assert status.state == "failed" and "Could not load model" in status.text
    assert "the run folder was removed" in status.text and list(tmp_path.iterdir()) == []
    assert trainings.run_names("login:ann") == [] and trainings.running == []
    with pytest.raises(DataError, match="no data yet"):
        trainings.start("login:ann", Config(), [])


def test_a_failed_resume_frees_the_slot(tmp_path, examples, tiny_llama_dir):
    """A torn metrics line (a crash mid-write), then Resume: whether the trainer repairs the log or refuses,
    the slot is released and the status says what happened: Start works again."""
    trainings = Trainings(tmp_path)
    config = Config().replace(**{**SFT, "model": str(tiny_llama_dir)})
    job = trainings.start("login:ann", config, examples)
    trainings.wait()
    metrics = job.run_dir / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + metrics.read_bytes()[:700])  # head -c 700 metrics >> metrics
    trainings.resume("login:ann", job.name, steps=3)
    trainings.wait()
    assert trainings.status("login:ann").state in ("failed", "done"), trainings.status("login:ann").text
    (tmp_path / "broken").mkdir()  # a resume that fails before its thread starts holds no slot either
    (tmp_path / "broken" / APP_RUN).write_text(json.dumps({"owner": "login:ann", "created": 0}))
    (tmp_path / "broken" / "config.yaml").write_text("model: {}\n")
    app_data.save_examples(examples[:2], tmp_path / "broken" / "data.jsonl")
    (tmp_path / "broken" / "checkpoint").mkdir()
    (tmp_path / "broken" / "checkpoint" / "trainer_state.json").write_text('{"step": ')
    with pytest.raises(ValueError):
        trainings.resume("login:ann", "broken", steps=3)
    assert trainings.running == [] and trainings.waiting == []
    again = trainings.start("login:ann", config.replace(steps=1), examples)
    trainings.wait()
    assert again.state == "done" and len(load_examples(again.run_dir / "data.jsonl")) == 24
