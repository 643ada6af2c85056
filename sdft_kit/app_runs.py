"""The web app's trainings: runs that belong to their owner, and one scheduler per server (no gradio here).

    owner_key(login, cookie)   who a request comes from: 'login:<name>', else 'browser:<hash of its cookie>'
    Trainings(runs_dir, ...)   start or resume a run (it waits in a bounded queue while every slot is busy),
                               stop it (or cancel it while it waits), the owner's status and records, the
                               board every visitor sees, and the owner's runs on disk
    run_name(config)           a readable folder name: sdft-system-lr1e-3-142501

The page asks by owner, not by page: a reload (a new gradio session with the same login or cookie)
sees the same live run and finished runs. Each run folder holds app_run.json (its owner, when it was
made, its held-out records, its tracker project), so a restarted server still lists every owner's runs.
The page polls `status`, `records` and `board` once a second.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .app_data import save_examples
from .checkpoint import mark_run
from .config import TEMPLATES, Config
from .data import DataError, Example, load_examples
from .records import StepRecord, load_records
from .tracking import resolve_report_to

APP_RUN = "app_run.json"  # the app's note in a run folder: owner, created, held-out records, tracker project
HELD_OUT = "heldout.jsonl"  # records kept out of training, for the Evaluate tab's new-task score
ACTIVE = ("waiting", "loading", "checking", "training", "stopping")
MAX_CHECKS = 64  # teacher checks kept for reuse (each a few KB)


class BusyError(RuntimeError):
    """The owner already has a run training or waiting, or the queue is full."""


def owner_key(login: str | None, cookie: str | None, session: str | None = None) -> str:
    """Who owns the runs a request starts: its login (gradio auth), else its browser's cookie (stored hashed:
    the cookie is a bearer secret), else the page's session."""
    if login:
        return f"login:{login}"
    if cookie:
        return "browser:" + hashlib.sha256(cookie.encode()).hexdigest()[:20]
    return f"session:{session or 'anonymous'}"


def tracker_project(owner: str) -> str:
    """One trackio / wandb project per login ('sdft-kit-ann'); without logins, the server's one ('sdft-kit')."""
    if not owner.startswith("login:"):
        return "sdft-kit"
    return "sdft-kit-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", owner.removeprefix("login:")).strip("-") or "user")


def lr_text(rate: float) -> str:
    """1e-3, 5e-4, 2.5e-4: a learning rate as a name part."""
    mantissa, exponent = f"{rate:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def run_name(config: Config, now: float | None = None) -> str:
    """A folder name that says what the run is: method, teacher template (methods with a teacher), learning
    rate and the time it was made, e.g. sdft-system-lr1e-3-142501."""
    from .check import template_label
    from .methods import method_of

    parts = [config.train.method]
    if method_of(config).uses_teacher:
        parts.append(template_label(config.teacher.template))
    parts += [f"lr{lr_text(config.train.learning_rate)}", time.strftime("%H%M%S", time.localtime(now))]
    return "-".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:{'02' if hours else ''}d}:{rest % 60:02d}"


@dataclass
class Status:
    state: str  # idle, waiting, loading, checking, training, stopping, stopped, done, failed, cancelled
    step: int
    steps: int
    text: str  # "step 3/5, elapsed 0:42 < remaining 1:10 · loss ..." or what happened
    run_dir: Path | None
    teacher_check: str = ""  # the teacher check's verdict, in words (see app_logic.check_text)

    @property
    def markdown(self) -> str:
        """What the page shows: the run, the status line, then the teacher check under it."""
        head = f"**{self.run_dir.name}** · " if self.run_dir is not None else ""
        return head + self.text + (f"\n\n{self.teacher_check}" if self.teacher_check else "")


@dataclass(eq=False)
class Job:
    """One run's training: waiting in the queue, then going in a thread of its own."""

    owner: str
    run_dir: Path
    config: Config
    examples: list[Example]
    resume: bool = False
    state: str = "waiting"
    error: str = ""
    records: list[StepRecord] = field(default_factory=list)
    check: object | None = None  # check.TeacherCheck, once the teacher check has run (or was reused)
    check_note: str = ""  # e.g. that the check was reused from an earlier run
    check_done: tuple[int, int] = (0, 0)  # the check's greedy answers: done, in all
    first_step: int = 0  # the step a resumed run starts from
    phase_at: float = 0.0  # when the current phase began
    last_step_at: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def steps(self) -> int:
        return self.config.train.steps

    @property
    def step(self) -> int:
        return self.records[-1]["step"] if self.records else self.first_step

    def per_step(self) -> float | None:
        """Mean seconds a step of this session took (None before the first)."""
        timed = [r["seconds"]["total"] for r in self.records if r["step"] > self.first_step]
        return sum(timed) / len(timed) if timed else None

    def remaining(self, now: float) -> float | None:
        """Seconds left in the phase under way, from the pace so far (None while there is no pace yet)."""
        if self.state == "checking":
            done, total = self.check_done
            return (now - self.phase_at) / done * (total - done) if done else None
        if self.state in ("training", "stopping") and self.per_step() is not None:
            return max(self.per_step() * (self.steps - self.step) - (now - self.last_step_at), 0.0)
        return None

    def progress_text(self, now: float) -> str:
        """The phase in a few words, with the time left where it is known: 'step 3/12, ~1:20 left'."""
        left = self.remaining(now)
        eta = "" if left is None else f", ~{format_seconds(left)} left"
        if self.state == "loading":
            return f"loading the model ({format_seconds(now - self.phase_at)})"
        if self.state == "checking":
            return f"checking the teacher{eta}"
        return f"step {self.step}/{self.steps}{eta}"

    # -- told by the driver, from the job's thread --
    def on_phase(self, phase: str) -> None:
        if self.state == "stopping":
            return
        self.state = "training" if phase == "training" else "checking"
        self.phase_at = self.last_step_at = time.time()

    def on_check_progress(self, done: int, total: int) -> None:
        self.check_done = (done, total)

    def on_record(self, record: StepRecord) -> None:
        self.records = [*self.records, record]
        self.last_step_at = time.time()


class Trainings:
    """The server's trainings: `concurrency` at a time, up to `max_waiting` more in a queue, each owned.

    `check_templates`: the templates the teacher check compares before a new run with a teacher (the
    app passes every named one, so the check names the best); a check is reused by a later run with the
    same model, data and check settings (it is deterministic: greedy answers on a seeded sample).
    """

    def __init__(self, runs_dir: str | Path, concurrency: int = 1, max_waiting: int = 8,
                 check_templates: Sequence[str] = tuple(TEMPLATES)):
        if concurrency < 1 or max_waiting < 0:
            raise ValueError(f"concurrency must be >= 1 and max_waiting >= 0; got {concurrency}, {max_waiting}")
        self.runs_dir = Path(runs_dir)
        self.concurrency, self.max_waiting = concurrency, max_waiting
        self.check_templates = tuple(check_templates)
        self._lock = threading.Lock()
        self.waiting: list[Job] = []
        self.running: list[Job] = []
        self._latest: dict[str, Job] = {}  # each owner's newest job
        self._checks: dict[str, tuple[object, str]] = {}  # check key -> (TeacherCheck, the run it came from)

    # -- an owner's runs on disk --
    def run_names(self, owner: str) -> list[str]:
        """The owner's runs on disk (their app_run.json says so), newest first."""
        found = []
        for folder in self.runs_dir.iterdir() if self.runs_dir.is_dir() else ():
            try:
                note = json.loads((folder / APP_RUN).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if note.get("owner") == owner and (folder / "config.yaml").is_file():
                found.append((note.get("created", 0.0), folder.name))
        return [name for _, name in sorted(found, reverse=True)]

    def run_path(self, owner: str, name: str | None) -> Path:
        """The folder of one of the owner's runs; any other name (someone else's run, a path) is refused."""
        if not name or name not in self.run_names(owner):
            raise ValueError("pick one of your runs (train one first)")
        return self.runs_dir / name

    def note(self, run_dir: Path) -> dict:
        """A run's app_run.json ({} for a folder the app did not make)."""
        try:
            return json.loads((Path(run_dir) / APP_RUN).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    # -- controls --
    def start(self, owner: str, config: Config, examples: list[Example], held_out: Sequence[Example] = (),
              data_name: str = "", task: str | None = None) -> Job:
        """A new run in a fresh folder: it trains now if a slot is free, else it waits in the queue.

        `held_out`: records kept out of training for the Evaluate tab (saved as heldout.jsonl); `task`:
        the bundled task the data came from (its eval split scores the run instead)."""
        if not examples:
            raise DataError("no data yet: upload a file or pick a sample on the Data tab first.")
        with self._lock:
            self._check_room(owner)
            run_dir = self._new_run_dir(config)
            try:
                config.save(run_dir / "config.yaml")  # listed as a run at once (the trainer rewrites it)
                save_examples(examples, run_dir / "data.jsonl")
                if held_out:
                    save_examples(list(held_out), run_dir / HELD_OUT)
                (run_dir / APP_RUN).write_text(json.dumps({
                    "owner": owner, "created": time.time(), "data": data_name, "held_out": len(held_out),
                    "task": task, "tracker": resolve_report_to(config.train.report_to),
                    "tracker_project": tracker_project(owner)}, indent=1), encoding="utf-8")
            except BaseException:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
            return self._submit(Job(owner, run_dir, config, list(examples)))

    def resume(self, owner: str, name: str, steps: int | None = None,
               check: Callable[[Config], Config] | None = None) -> Job:
        """Continue one of the owner's stopped runs from its checkpoint (optionally to a new total of `steps`);
        `check` may refuse the config (the server's limits)."""
        run_dir = self.run_path(owner, name)
        if not (run_dir / "checkpoint" / "trainer_state.json").is_file() or not (run_dir / "data.jsonl").is_file():
            raise FileNotFoundError(f"{run_dir.name}: no checkpoint to resume from")
        config = Config.load(run_dir / "config.yaml")
        if steps:
            config = config.replace(steps=steps)
        if check is not None:
            config = check(config)
        first = json.loads((run_dir / "checkpoint" / "trainer_state.json").read_text())["step"]
        job = Job(owner, run_dir, config, load_examples(run_dir / "data.jsonl"), resume=True, first_step=first)
        job.check = _saved_check(run_dir)  # the verdict stays on the page after Resume
        with self._lock:
            self._check_room(owner)
            return self._submit(job)

    def stop(self, owner: str) -> str:
        """Stop the owner's training after the step under way (it saves a checkpoint), or cancel its waiting
        run; says which, or that there is nothing to stop."""
        with self._lock:
            job = self._latest.get(owner)
            if job is None or job.state not in ACTIVE:
                return "Nothing of yours is training or waiting."
            if job.state == "waiting":
                self.waiting.remove(job)
                job.state = "cancelled"
                job.finished.set()
                shutil.rmtree(job.run_dir, ignore_errors=True)  # it never trained: no copy of the data is kept
                return f"Cancelled {job.name} (it had not started)."
            job.state = "stopping"
            job.stop.set()
            return f"Stopping {job.name} after the current step; the checkpoint will be saved for Resume."

    def wait(self, owner: str | None = None, timeout: float | None = None) -> bool:
        """Wait until the owner's newest job (None: every job) has ended; False if `timeout` passed first."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            with self._lock:
                jobs = [self._latest[owner]] if owner in self._latest else [] if owner else \
                    [*self.running, *self.waiting]
            pending = [job for job in jobs if not job.finished.is_set()]
            if not pending:
                return True
            left = None if deadline is None else deadline - time.time()
            if left is not None and left <= 0:
                return False
            pending[0].finished.wait(None if left is None else min(left, 1.0))

    # -- what the page shows --
    def job(self, owner: str) -> Job | None:
        return self._latest.get(owner)

    def records(self, owner: str) -> list[StepRecord]:
        job = self._latest.get(owner)
        return list(job.records) if job is not None else []

    def position(self, job: Job) -> int | None:
        """A waiting job's place in the queue, from 1."""
        with self._lock:
            return self.waiting.index(job) + 1 if job in self.waiting else None

    def status(self, owner: str, check_text: Callable[[object], str] = lambda check: "") -> Status:
        """The owner's newest run, as the Train tab's status shows it; `check_text` words the teacher check."""
        job = self._latest.get(owner)
        if job is None:
            return Status("idle", 0, 0, "no training yet", None)
        now = time.time()
        check = (check_text(job.check) + (f"\n\n{job.check_note}" if job.check_note else "")) if job.check else ""
        head = f"step {job.step}/{job.steps}"
        if job.state == "waiting":
            ahead = ", ".join(j.progress_text(now) for j in self.running)
            text = f"waiting: #{self.position(job) or '?'} in the queue" + (f" (training now: {ahead})" if ahead else "")
        elif job.state == "cancelled":
            text = "cancelled before it started (nothing was trained; its folder was removed)"
        elif job.state == "failed":
            text = f"{head} · failed: {job.error}"
        elif job.state == "loading":
            text = f"{head} · loading the model… ({format_seconds(now - job.phase_at)})"
        elif job.state == "checking":
            done, total = job.check_done
            left = job.remaining(now)
            text = (f"{head} · checking the teacher ({len(self.check_templates)} templates): {done}/{total or '?'} "
                    f"answers, elapsed {format_seconds(now - job.phase_at)} < remaining "
                    f"{'?' if left is None else format_seconds(left)}")
        else:
            text = self._step_text(job, now)
        return Status(job.state, job.step, job.steps, text, job.run_dir, check)

    @staticmethod
    def _step_text(job: Job, now: float) -> str:
        records = job.records
        elapsed = records[-1]["elapsed_s"] if records else 0.0
        text = f"step {job.step}/{job.steps}, elapsed "
        if job.state in ("training", "stopping"):
            elapsed += now - job.last_step_at  # the step under way
            left = job.remaining(now)
            text += f"{format_seconds(elapsed)} < remaining {'?' if left is None else format_seconds(left)}"
        else:  # stopped or done: nothing is running, so no time remains to count down
            text += format_seconds(elapsed)
        if records:
            last = records[-1]
            text += f" · loss {last['loss']:.4f}"
            text += "" if last["mean_kl"] is None else f" · mean KL {last['mean_kl']:.4f}"
        return text + {"training": "", "stopping": " · stopping after this step…", "done": " · done",
                       "stopped": " · stopped (Resume continues from the checkpoint)"}[job.state]

    def board(self, owner: str | None = None) -> str:
        """What every visitor sees: the runs training now with their time left, and the queue with positions
        (the owner's own marked 'yours'; whose the others are is not shown)."""
        now = time.time()
        with self._lock:
            running, waiting = list(self.running), list(self.waiting)

        def named(job: Job) -> str:
            return f"`{job.name}`" + (" (yours)" if job.owner == owner else "")

        room = f"{self.concurrency} at a time, up to {self.max_waiting} waiting"
        if not running:
            return f"**Server:** nothing is training; Start trains at once ({room})."
        text = "**Server:** training now: " + "; ".join(f"{named(j)}, {j.progress_text(now)}" for j in running)
        if waiting:
            text += " · waiting: " + " · ".join(f"{i}. {named(j)}" for i, j in enumerate(waiting, start=1))
        return text + f" ({room})."

    # -- inside --
    def _check_room(self, owner: str) -> None:
        """Refuse a second live run of one owner, or a Start when the queue is full (under the lock)."""
        mine = self._latest.get(owner)
        if mine is not None and mine.state in ACTIVE:
            what = "waiting" if mine.state == "waiting" else "training"
            raise BusyError(f"You already have {mine.name} {what} (one run at a time each): stop it, or wait for "
                            "it to finish.")
        if len(self.running) >= self.concurrency and len(self.waiting) >= self.max_waiting:
            raise BusyError(f"The queue is full ({len(self.waiting)} runs waiting for {self.concurrency} training "
                            "slot(s)): try again when one has started.")

    def _new_run_dir(self, config: Config) -> Path:
        name = run_name(config)
        run_dir, suffix = self.runs_dir / name, 1
        while run_dir.exists():
            suffix += 1
            run_dir = self.runs_dir / f"{name}-{suffix}"
        mark_run(run_dir)  # a run folder with no step yet, which the Trainer may start in
        return run_dir

    def _submit(self, job: Job) -> Job:
        """Queue the job and start what the free slots allow (under the lock)."""
        self._latest[job.owner] = job
        self.waiting.append(job)
        self._dispatch()
        return job

    def _dispatch(self) -> None:
        while self.waiting and len(self.running) < self.concurrency:
            job = self.waiting.pop(0)
            self.running.append(job)
            job.state, job.phase_at = "loading", time.time()
            threading.Thread(target=self._run, args=(job,), name=f"sdft-kit-{job.name}", daemon=True).start()

    def _run(self, job: Job) -> None:
        from .driver import train
        from .trainer import Trainer

        try:
            trainer = Trainer(job.config, job.examples, job.run_dir, resume=job.resume)
            try:
                if job.resume:
                    job.records = load_records(job.run_dir)  # resume trims steps logged after the checkpoint
                key = _check_key(job.config, job.examples, self.check_templates)
                reused = None if job.resume else self._checks.get(key)
                if reused is not None and trainer.method.uses_teacher:
                    reused[0].save(job.run_dir / "teacher_check.json")
                    job.check, job.check_note = reused[0], f"(Reused from {reused[1]}: same model, data and check.)"
                checked = not job.resume and reused is None
                outcome = train(trainer, check=(self.check_templates or True) if checked else False, progress=False,
                                stop=job.stop, on_phase=job.on_phase, on_check=lambda c: setattr(job, "check", c),
                                on_check_progress=job.on_check_progress, on_record=job.on_record,
                                tracker_project=tracker_project(job.owner))
                if outcome.check is not None:
                    self._checks[key] = (outcome.check, job.name)
                    while len(self._checks) > MAX_CHECKS:  # the oldest go first
                        self._checks.pop(next(iter(self._checks)))
            finally:
                trainer.close()
            job.state = "stopped" if outcome.stopped else "done"
        except Exception as err:  # shown on the page; the app stays usable
            job.state, job.error = "failed", f"{type(err).__name__}: {err}"
            if not job.resume and not (job.run_dir / "metrics.jsonl").exists():  # nothing trained: no data copy
                shutil.rmtree(job.run_dir, ignore_errors=True)
                job.error += " (nothing was trained; the run folder was removed)"
        finally:
            with self._lock:
                self.running.remove(job)
                job.finished.set()
                self._dispatch()


def _check_key(config: Config, examples: list[Example], templates: Sequence[str]) -> str:
    """What the teacher check's result depends on: the model, the data, the templates and the check's
    settings (check.quick_check)."""
    from .check import template_label

    own = config.teacher.template if template_label(config.teacher.template) == "custom" else \
        template_label(config.teacher.template)
    compared = list(dict.fromkeys([*templates, own]))  # as quick_check compares them
    parts = [config.to_dict()["model"], compared, config.train.seed, min(32, config.rollout.max_new_tokens),
             config.loss.skip_first, [[list(ex.messages), ex.demonstration] for ex in examples]]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _saved_check(run_dir: Path):
    """The run's teacher_check.json, read back (None if it has none or it does not read)."""
    from .check import TeacherCheck

    path = Path(run_dir) / "teacher_check.json"
    try:
        return TeacherCheck.load(path) if path.is_file() else None
    except (OSError, ValueError, TypeError, KeyError):
        return None
