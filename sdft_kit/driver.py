"""The run driver: a Trainer's steps taken to the end, the same way for every front end.

    steps(trainer, instruments)  the loop: each step's record, with what the instruments add, appended to
                                 metrics.jsonl; a checkpoint every save_every steps, at the last step and on a
                                 stop; the adapter saved at the end
    train(trainer, ...)          a whole run: the teacher check before step 1 (methods with a teacher), a tqdm
                                 bar with elapsed < remaining, the tracker, the stop (Ctrl-C, or an Event the
                                 app sets), the step lines; returns an Outcome

`sdft-kit train` and `demo`, the app's worker, the experiments (compare, continual, sweep) and
`Trainer.train` all run through `train`. Only process 0 of several (accelerate) checks, reports,
tracks and writes.

An instrument is a function `instrument(trainer, record) -> dict | None` called after every step,
before the record is written: what it returns is added to the record (e.g. the scores of a
probe evaluated every N steps), so it reaches metrics.jsonl, the step line, the tracker and the views.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import ADAPTER
from .export import save_adapter
from .records import StepRecord

if TYPE_CHECKING:
    from .check import TeacherCheck
    from .trainer import Trainer

Instrument = Callable[["Trainer", StepRecord], "dict | None"]


class NonFiniteSteps(RuntimeError):
    """Training stopped: `max_bad_steps` steps in a row had a non-finite loss or gradients."""

    @classmethod
    def after(cls, step: int, limit: int, checkpoint: Path | None) -> NonFiniteSteps:
        return cls(f"training stopped at step {step + 1}: the loss or the gradients were not finite {limit} times in "
                   f"a row. The weights after step {step} are kept" + (f" (checkpoint in {checkpoint})" if checkpoint
                                                                       else "")
                   + "; start a new run with a lower --learning-rate, or raise --max-bad-steps")


@dataclass
class Outcome:
    """How a run driven by `train` ended."""

    records: list[StepRecord] = field(default_factory=list)  # this call's steps
    check: TeacherCheck | None = None  # the teacher check before step 1, if one ran
    step: int = 0  # steps trained so far (a resumed run counts its earlier steps)
    steps: int = 0  # the run's planned total
    saved_step: int = 0  # the newest checkpointed step

    @property
    def stopped(self) -> bool:
        """Ended before the planned total (a stop: Ctrl-C, the app's Stop)."""
        return self.step < self.steps


def monitor_text(evaluation: dict) -> str:
    """The forgetting monitor's scores as text: 'prior skills 96.8%  new task 0.312 (ROUGE-L F1, 7.9s)'."""
    new = evaluation["new_task"]
    new_text = f"{new * 100:.1f}%" if evaluation["new_task_measure"] == "accuracy" else f"{new:.3f}"
    return (f"prior skills {evaluation['prior_skills'] * 100:.1f}%  new task {new_text} "
            f"({evaluation['new_task_measure']}, {evaluation['seconds']:.1f}s)")


def step_line(record: StepRecord) -> str:
    """One step as a line of text (the CLI and the demo print it); the forgetting monitor's scores follow on the
    steps it scored, and a line for step 0 (the weights before training) comes first in a run's first record."""
    kl = "" if record.get("mean_kl") is None else f"  mean KL {record['mean_kl']:.4f}"
    s = record["seconds"]
    start = ""
    if record.get("monitor_start"):  # the scores of the weights before step 1
        start = f"step {0:>3}/{record['steps']}  {monitor_text(record['monitor_start'])}\n"
    monitor = f"  {monitor_text(record['monitor'])}" if record.get("monitor") else ""
    return (f"{start}step {record['step']:>3}/{record['steps']}  loss {record['loss']:.4f}{kl}  "
            f"tokens {record['tokens']:>4}  {s['total']:.1f}s  peak {record['peak_mem_mb']:.0f} MB{monitor}")


def steps(trainer: Trainer, instruments: Sequence[Instrument] = ()) -> Iterator[StepRecord]:
    """Train to `config.train.steps`, yielding each step's record as it is made.

    With a run directory: each record is appended to metrics.jsonl, the state is checkpointed every
    `save_every` steps, at the last step, when stopped (`trainer.stop()`) and before NonFiniteSteps is
    raised, and the adapter is saved at the end. The run stays locked until the steps end.
    """
    from .monitor import Monitor

    run, config = trainer.run, trainer.config.train
    if run is not None:
        run.acquire()
    try:
        # The forgetting monitor (monitor.py): scores before step 1, every monitor_every steps and at the end.
        monitor = Monitor(trainer) if trainer.probes is not None else None
        if monitor is not None:
            monitor.start()
            instruments = [*instruments, monitor]
        while trainer.step < config.steps and not trainer.processes.any(trainer.stop_requested):  # all stop together
            try:
                record = trainer.train_step()
            except NonFiniteSteps:
                trainer.checkpoint_if_behind()  # the last good state
                raise
            for instrument in instruments:
                record.update(instrument(trainer, record) or {})
            if run is not None:
                run.append_record(record)
                if trainer.step % config.save_every == 0 or trainer.step == config.steps or trainer.stop_requested:
                    trainer.save_checkpoint()
                    if monitor is not None:
                        monitor.after_checkpoint()  # adapters now beaten for good go
            yield record
        trainer.checkpoint_if_behind()  # stopped while the last record was being handled
        if monitor is not None:
            monitor.after_checkpoint()
        if run is not None:
            run.save(ADAPTER, lambda path: save_adapter(trainer.model, trainer.tokenizer, path, trainer.out_dir,
                                                        len(trainer.examples)), trainer.step)
    finally:
        if run is not None:
            run.release()


@contextlib.contextmanager
def stop_on_ctrl_c(trainer: Trainer, say: Callable[[str], None]) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) once: finish the step under way, checkpoint it and stop. Twice: quit at once.
    Signals reach the main thread only: elsewhere (the app's worker) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame) -> None:
        say("\nstopping after this step, with a checkpoint (Ctrl-C again quits at once)")
        trainer.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(trainer: Trainer, *, check: bool | Sequence[str] = False, progress: bool = True, echo: bool = False,
          stop: threading.Event | None = None, catch_signals: bool = False, instruments: Sequence[Instrument] = (),
          tracker_name: str | None = None, tracker_project: str | None = None, on_phase: Callable[[str], None] | None = None,
          on_check: Callable[[TeacherCheck], None] | None = None,
          on_check_progress: Callable[[int, int], None] | None = None,
          on_record: Callable[[StepRecord], None] | None = None) -> Outcome:
    """Drive a run to its end (or its stop) and say how it ended.

    check: run the quick teacher check before step 1 of a new run of a method with a teacher (its result
        goes to `on_check` and the Outcome, and to the run directory's teacher_check.json); a list of
        templates compares them with the run's own (the check then names the best).
    progress: a tqdm bar (stderr in a terminal, a widget in a notebook) with elapsed < remaining.
    echo: print the check's verdict and one line per step on stdout, above the bar.
    stop: an Event another thread sets to stop after the step under way (the app's Stop).
    catch_signals: Ctrl-C (SIGINT, SIGTERM) stops after the step under way, with a checkpoint.
    instruments: functions run after every step whose results are added to the record (see the module).
    tracker_name, tracker_project: the tracker's run name (default: the run directory's name) and project
        (default "sdft-kit"); config.train.report_to picks the tracker.
    on_phase, on_check, on_record: told of each phase ("checking the teacher", "training"), of the check's
        result and of each record, as they happen; on_check_progress of the check's (answers done, in all).
    """
    from tqdm.auto import tqdm

    from .tracking import open_tracker

    main = trainer.processes.main
    config = trainer.config
    outcome = Outcome(step=trainer.step, steps=config.train.steps, saved_step=trainer.saved_step)

    def say(text: str) -> None:
        if echo and main:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()

    def warn(text: str) -> None:
        if echo and main:
            print(text, file=sys.stderr, flush=True)

    def phase(text: str) -> None:
        if on_phase is not None:
            on_phase(text)

    stopped = stop is not None and stop.is_set()  # a stop while the model loaded: no check, no step
    if check and trainer.method.uses_teacher and trainer.step == 0 and main and not stopped:
        from .check import quick_check

        phase("checking the teacher")
        templates = () if isinstance(check, bool) else tuple(check)
        outcome.check = quick_check(trainer, progress=progress, templates=templates, on_progress=on_check_progress)
        if outcome.check is not None:  # None: skipped (a record too long for it)
            saved = f" (saved to {trainer.out_dir / 'teacher_check.json'})" if trainer.out_dir is not None else ""
            say(outcome.check.summary() + saved + "\n")
            if on_check is not None:
                on_check(outcome.check)
    if stop is not None and stop.is_set():
        trainer.stop()
    phase("training")
    tracked = config if main else config.replace(report_to="none")
    signals = stop_on_ctrl_c(trainer, warn) if catch_signals else contextlib.nullcontext()
    tracker = open_tracker(tracked, trainer.out_dir, name=tracker_name, resume=trainer.step > 0, project=tracker_project)
    with signals, tracker, \
            tqdm(total=config.train.steps, initial=trainer.step, desc=trainer.method.title, unit="step",
                 file=sys.stderr, dynamic_ncols=True, disable=not (progress and main)) as bar:
        for record in tracker.track(steps(trainer, instruments)):
            outcome.records.append(record)
            say(step_line(record))
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            bar.update(1)
            if on_record is not None:
                on_record(record)
            if stop is not None and stop.is_set():
                trainer.stop()
    outcome.step, outcome.saved_step = trainer.step, trainer.saved_step
    return outcome
