"""What the web app does, as plain functions and one worker per browser session (no gradio here).

    make_config(**settings)      the Config of the Train tab's settings, by name
    cli_command(config, ...)     the `sdft-kit train ...` command that runs the same training
    TrainingWorker               one session's runs: train in a background thread, stop, resume, status
    export_adapter_zip(...)      the run's adapter with its model card as a zip (export_gguf_zip: merged as GGUF with
                                 an Ollama Modelfile; export_merged_zip: merged in 16-bit;
                                 push_adapter: to the Hugging Face Hub)
    compare_answers(...)         one prompt answered by the base model, the trained adapter and the teacher, timed
    chat_answer(...)             the Chat tab's answer as it grows: base, a trained run, or the teacher

`app.py` is the thin gradio front end over these; the Data tab's logic is in `app_data.py`, and
what a shared server allows (logins, models, sizes) in `app_safety.py`. Tests call them directly.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .app_data import save_examples
from .checkpoint import mark_run
from .config import TEMPLATES, Config, fields_by_section, flag
from .data import DataError, Example, load_examples
from .demos import student_prompt, teacher_messages, teacher_prompt
from .export import adapter_dir
from .records import StepRecord, load_records

# Divergence choices shown in the app, as the loss's alpha (see LossConfig).
DIVERGENCES = {"forward KL (paper)": 0.0, "JSD (alpha 0.5)": 0.5, "reverse KL": 1.0}
TEMPLATE_CHOICES = (*TEMPLATES, "custom")

# One training at a time in this process, whichever session asks: the limit on concurrent trainings.
_ONE_TRAINING = threading.Lock()


class BusyError(RuntimeError):
    """A training run is already going on."""


def wait_until_idle(timeout: float | None = None) -> bool:
    """Wait until no training holds the process's slot (True), or `timeout` seconds pass (False)."""
    if not _ONE_TRAINING.acquire(timeout=-1 if timeout is None else timeout):
        return False
    _ONE_TRAINING.release()
    return True


# -- config and the equivalent command -------------------------------------------------------
def make_config(*, model: str = "embedded", load_in_4bit: bool | None = None, method: str = "sdft", steps: int = 12,
                learning_rate: float = 5e-4, lora_r: int = 16, max_new_tokens: int = 48, batch_size: int = 2,
                teacher: str = "ema", divergence: str = "forward KL (paper)", vocab: str = "full", topk: int = 100,
                template: str = "paper", custom_template: str = "", skip_first: int = 3, demo_selection: str = "own",
                threads: int = 1, report_to: str = "auto") -> Config:
    """The Config for the Train tab's settings, by name; raises ValueError saying what to change.

    Every name but three is the config field's: divergence is a name from DIVERGENCES (the loss's
    alpha), template a name from TEMPLATE_CHOICES ('custom' takes `custom_template`, a text with
    {prompt} and {demonstration}), and topk is used with vocab 'topk' only."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}; got {divergence!r}")
    if template not in TEMPLATE_CHOICES:
        raise ValueError(f"template must be one of {', '.join(TEMPLATE_CHOICES)}; got {template!r}")
    text = custom_template if template == "custom" else TEMPLATES["paper"] if template == "paper" else template
    return Config().replace(model=(model or "embedded").strip(), load_in_4bit=load_in_4bit, method=method,
                            steps=int(steps), learning_rate=float(learning_rate), lora_r=int(lora_r),
                            max_new_tokens=int(max_new_tokens), batch_size=int(batch_size), teacher=teacher,
                            alpha=DIVERGENCES[divergence], vocab=vocab, topk=int(topk), template=text,
                            skip_first=int(skip_first), demo_selection=demo_selection, threads=int(threads),
                            report_to=report_to)


def template_setting(template: str) -> tuple[str, str]:
    """(choice, custom text) of the template setting for a config's template (a name or a text)."""
    if template in TEMPLATE_CHOICES:
        return template, ""
    name = next((name for name, text in TEMPLATES.items() if text == template), None)
    return (name, "") if name else ("custom", template)


def advised_values(advice: dict) -> dict:
    """The Train tab's settings (make_config's names) that apply the teacher check's advice
    (check.advised_settings): its template becomes the template choice and the custom text."""
    values = {name: value for name, value in advice.items() if name != "template"}
    if "template" in advice:
        values["template"], values["custom_template"] = template_setting(advice["template"])
    return values


def cli_command(config: Config, data: str = "demos.jsonl", out: str = "runs/my-run", columns: str | None = None) -> str:
    """`sdft-kit train` with a flag for every field that differs from the defaults (and --columns, the data's
    column mapping, when one was given)."""
    defaults = Config().to_dict()
    values = config.to_dict()
    parts = ["sdft-kit", "train", "--data", data, *(["--columns", columns] if columns else []), "--out", out]
    for section, f in fields_by_section():
        value = values[section][f.name]
        if value == defaults[section][f.name]:
            continue
        if isinstance(value, bool):
            parts.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
        else:
            parts += [flag(f.name), str(value)]
    return " ".join(shlex.quote(part) for part in parts)


# -- training in the background --------------------------------------------------------------
def format_seconds(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:{'02' if hours else ''}d}:{rest % 60:02d}"


@dataclass
class Status:
    state: str  # idle, loading, training, stopping, stopped, done, failed
    step: int
    steps: int
    text: str  # "step 3/5, elapsed 0:42 < remaining 1:10 · loss ..." or what happened
    run_dir: Path | None
    teacher_check: str = ""  # the quick teacher check's verdict, before SDFT training

    @property
    def markdown(self) -> str:
        """What the page shows: the status line, then the teacher check under it."""
        return self.text + (f"\n\n{self.teacher_check}" if self.teacher_check else "")


class TrainingWorker:
    """One browser session's runs: trains one at a time in a thread that writes the run directory; the
    page polls `status()` and `records()`. Stop, Resume and the run lists act on this session's runs only.

    Stop sets a flag checked between steps; the worker then writes the checkpoint and the
    adapter, so `resume()` continues the run with `Trainer(..., resume=True)`. The thread and its
    stop flag are made per training, so a fresh worker is plain data (gradio copies a session's first state).
    """

    def __init__(self, runs_dir: str | Path):
        self.runs_dir = Path(runs_dir)
        self.runs: list[str] = []  # the run folders this session made, oldest first
        self.run_dir: Path | None = None
        self.state, self.phase, self.error = "idle", "", ""
        self.teacher_check = ""  # the quick teacher check's verdict, before SDFT training
        self.advice: dict = {}  # the settings that act on the check's advice (check.advised_settings)
        self._records: list[dict] = []
        self._steps = self._first_step = 0
        self._started = self._last_step_at = 0.0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # -- this session's runs --
    def run_names(self) -> list[str]:
        """This session's runs that are still on disk, newest first."""
        return [name for name in reversed(self.runs) if (self.runs_dir / name / "config.yaml").is_file()]

    def run_path(self, name: str | None) -> Path:
        """The folder of one of this session's runs; any other name (another session's run, a path) is refused."""
        if not name or name not in self.run_names():
            raise ValueError("pick one of this session's runs (train one first)")
        return self.runs_dir / name

    # -- controls --
    def start(self, config: Config, examples: list[Example]) -> Path:
        """A new run in a fresh folder of runs_dir (named by the time and method)."""
        if not examples:
            raise DataError("no data yet: upload a file or pick a sample on the Data tab first.")
        self._take_lock()
        try:
            run_dir = self._new_run_dir(config.train.method)
            try:
                config.save(run_dir / "config.yaml")  # listed as a run at once (the trainer rewrites it)
                save_examples(examples, run_dir / "data.jsonl")
            except BaseException:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
            self.runs.append(run_dir.name)
            self._launch(run_dir, config, examples, resume=False)
        except BaseException:
            _ONE_TRAINING.release()
            raise
        return run_dir

    def resume(self, name: str, steps: int | None = None, check: Callable[[Config], Config] | None = None) -> Path:
        """Continue one of this session's stopped runs from its checkpoint (optionally to a new total of
        `steps`); `check` may refuse the config (the server's limits)."""
        run_dir = self.run_path(name)
        if not (run_dir / "checkpoint" / "trainer_state.json").is_file() or not (run_dir / "data.jsonl").is_file():
            raise FileNotFoundError(f"{run_dir.name}: no checkpoint to resume from")
        config = Config.load(run_dir / "config.yaml")
        if steps:
            config = config.replace(steps=steps)
        if check is not None:
            config = check(config)
        examples = load_examples(run_dir / "data.jsonl")
        self._take_lock()
        try:
            self._launch(run_dir, config, examples, resume=True)
        except BaseException:
            _ONE_TRAINING.release()
            raise
        return run_dir

    def stop(self) -> None:
        if self.is_running():
            self.state = "stopping"
            self._stop.set()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- what the page shows --
    def records(self) -> list[StepRecord]:
        return list(self._records)

    def status(self) -> Status:
        records = self._records
        step = records[-1]["step"] if records else self._first_step
        head = f"step {step}/{self._steps}"
        if self.state == "idle":
            return Status("idle", 0, 0, "no training yet", None)
        if self.state == "failed":
            return Status("failed", step, self._steps, f"{head} · failed: {self.error}", self.run_dir)
        if self.state == "loading":
            text = f"{head} · {self.phase}… ({format_seconds(time.time() - self._started)})"
            return Status("loading", step, self._steps, text, self.run_dir, self.teacher_check)
        elapsed = records[-1]["elapsed_s"] if records else 0.0
        text = f"{head}, elapsed "
        if self.state in ("training", "stopping"):
            elapsed += time.time() - self._last_step_at  # the step under way
            session = [r for r in records if r["step"] > self._first_step]
            per_step = sum(r["seconds"]["total"] for r in session) / len(session) if session else None
            remaining = "?" if per_step is None else format_seconds(
                per_step * (self._steps - step) - (time.time() - self._last_step_at))
            text += f"{format_seconds(elapsed)} < remaining {remaining}"
        else:  # stopped or done: nothing is running, so no time remains to count down
            text += format_seconds(elapsed)
        if records:
            last = records[-1]
            text += f" · loss {last['loss']:.4f}"
            text += "" if last["mean_kl"] is None else f" · mean KL {last['mean_kl']:.4f}"
        text += {"training": "", "stopping": " · stopping after this step…", "done": " · done",
                 "stopped": " · stopped (Resume continues from the checkpoint)"}[self.state]
        return Status(self.state, step, self._steps, text, self.run_dir, self.teacher_check)

    # -- the thread --
    def _take_lock(self) -> None:
        if self.is_running():
            raise BusyError(f"This session is already training {self.run_dir.name} (one run at a time). "
                            "Stop it or wait for it to finish.")
        if not _ONE_TRAINING.acquire(blocking=False):
            raise BusyError("A training run is already in progress on this server (one at a time, for every "
                            "session). Try again when it finishes.")

    def _new_run_dir(self, method: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir, suffix = self.runs_dir / f"{stamp}-{method}", 1
        while run_dir.exists():
            suffix += 1
            run_dir = self.runs_dir / f"{stamp}-{method}-{suffix}"
        mark_run(run_dir)  # a run folder with no step yet, which the Trainer may start in
        return run_dir

    def _launch(self, run_dir: Path, config: Config, examples: list[Example], resume: bool) -> None:
        """Start the thread, which owns the lock from then on (it releases it whatever happens)."""
        self.run_dir, self.state, self.phase, self.error = run_dir, "loading", "loading the model", ""
        self.teacher_check, self.advice, self._records = "", {}, []
        self._first_step = json.loads((run_dir / "checkpoint" / "trainer_state.json").read_text())["step"] \
            if resume else 0
        self._steps = config.train.steps
        self._started = self._last_step_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(run_dir, config, examples, resume),
                                        name="sdft-kit-training", daemon=True)
        self._thread.start()

    def _run(self, run_dir: Path, config: Config, examples: list[Example], resume: bool) -> None:
        from .driver import train
        from .trainer import Trainer

        try:
            trainer = Trainer(config, examples, run_dir, resume=resume)
            self._records = load_records(run_dir)  # resume trims steps logged after the checkpoint
            outcome = train(trainer, check=not resume, progress=False, stop=self._stop, on_phase=self._on_phase,
                            on_check=self._on_check, on_record=self._on_record)
            self.state = "stopped" if outcome.stopped else "done"
        except Exception as err:  # shown on the page; the app stays usable
            self.state, self.error = "failed", f"{type(err).__name__}: {err}"
            if not resume and not (run_dir / "metrics.jsonl").exists():  # nothing trained: keep no copy of the data
                shutil.rmtree(run_dir, ignore_errors=True)
                self.runs.remove(run_dir.name)
                self.error += " (nothing was trained; the run folder was removed)"
        finally:
            _ONE_TRAINING.release()

    def _on_phase(self, phase: str) -> None:
        if phase == "training":
            self.state, self._last_step_at = "training", time.time()
        else:  # the teacher check: the page shows the phase instead of a bar
            self.phase = phase

    def _on_check(self, check) -> None:
        self.teacher_check, self.advice = check.summary(), check.settings  # shown under the status line

    def _on_record(self, record: StepRecord) -> None:
        self._records = self._records + [record]
        self._last_step_at = time.time()


def run_config(run_dir: Path) -> Config:
    return Config.load(Path(run_dir) / "config.yaml")


# -- export, compare, chat -------------------------------------------------------------------
def export_adapter_zip(run_dir: Path, dest_dir: Path) -> Path:
    """The run's shareable adapter (export.export_adapter: PEFT files naming the real base, the tokenizer,
    the model card and the run's config) as <run>-adapter.zip."""
    from .export import export_adapter

    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    target = dest_dir / f"{run_dir.name}-adapter.zip"
    with tempfile.TemporaryDirectory(dir=dest_dir) as staging:
        _zip(export_adapter(run_dir, Path(staging) / "adapter"), target, "adapter", zipfile.ZIP_DEFLATED)
    return target


def _zip(folder: Path, target: Path, root: str, compression: int) -> None:
    with zipfile.ZipFile(target, "w", compression) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{root}/{path.relative_to(folder)}")


def export_merged_zip(run_dir: Path, dest_dir: Path, dtype: str = "bfloat16") -> Path:
    """Base + adapter merged in 16-bit (export.export_merged: a 4-bit run's adapter goes into a 16-bit copy
    of its base), with the model card, as <run>-merged.zip."""
    from .export import export_merged

    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    target = dest_dir / f"{run_dir.name}-merged.zip"
    with tempfile.TemporaryDirectory(dir=dest_dir) as staging:
        merged = export_merged(run_dir, Path(staging) / "merged", dtype)
        _zip(merged, target, "merged", zipfile.ZIP_STORED)  # weights barely compress: store them
    return target


def export_gguf_zip(run_dir: Path, dest_dir: Path, gguf_type: str = "q8_0") -> Path:
    """Base + adapter merged as GGUF (gguf_export.export_gguf) with an Ollama Modelfile, as <run>-gguf.zip."""
    from .gguf_export import export_gguf

    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    target = dest_dir / f"{run_dir.name}-gguf.zip"
    with tempfile.TemporaryDirectory(dir=dest_dir) as staging:
        result = export_gguf(run_dir, Path(staging) / "gguf", (gguf_type,))
        _zip(result.folder, target, "gguf", zipfile.ZIP_STORED)  # weights barely compress: store them
    return target


def push_adapter(run_dir: Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload the run's shareable adapter (with its model card) to the Hub repo `repo_id`; returns its URL.
    Offline, without a login or without rights: RuntimeError with one line saying what to do."""
    from .export import export_adapter, push

    if not repo_id or "/" not in repo_id.strip():
        raise ValueError("give the repo as owner/name, e.g. your-name/my-sdft-adapter")
    with tempfile.TemporaryDirectory() as staging:
        folder = export_adapter(run_dir, Path(staging) / "adapter")
        return push(folder, repo_id.strip(), private=private, token=token or None)


Progress = Callable[[float, str], None]


def compare_answers(prompt: str, demonstration: str, model: str = "embedded", run_dir: Path | None = None,
                    max_new_tokens: int = 64, progress: Progress | None = None) -> dict:
    """Greedy answers to one prompt: the base model, base + the run's trained adapter, and the teacher (the
    base shown the demonstration, with the run's template). No run or no demonstration gives None there.
    `seconds` holds what each part took (load, base, teacher, trained); `progress(fraction, phase)` is told
    each phase as it starts."""
    from .generation import generate_text
    from .models import load_model

    if not prompt.strip():
        raise ValueError("type a prompt to compare the answers")
    report = progress or (lambda fraction, phase: None)
    config = run_config(run_dir) if run_dir is not None else Config().replace(model=model)
    seconds: dict[str, float] = {}

    def timed(name: str, fraction: float, work: Callable):
        report(fraction, {"load": "loading the model"}.get(name, f"answering with the {name} model"))
        start = time.perf_counter()
        result = work()
        seconds[name] = round(time.perf_counter() - start, 2)
        return result

    base, tokenizer = timed("load", 0.0, lambda: load_model(config.model.model, config.model))
    example = Example(({"role": "user", "content": prompt},), demonstration)
    student = student_prompt(tokenizer, example)
    # A prompt that does not fit the model's context is refused (generation.TooLong), not answered.
    answers = {"base": timed("base", 0.25, lambda: generate_text(base, tokenizer, [student], max_new_tokens,
                                                                 names=["the prompt"])[0]),
               "trained": None, "teacher": None, "seconds": seconds}
    if demonstration.strip():
        shown = teacher_prompt(tokenizer, example, [demonstration], config.teacher.template)
        answers["teacher"] = timed("teacher", 0.5, lambda: generate_text(
            base, tokenizer, [shown], max_new_tokens, names=["the prompt with the demonstration"])[0])
    if run_dir is not None:
        from peft import PeftModel

        def trained_answer() -> str:
            trained = PeftModel.from_pretrained(base, adapter_dir(Path(run_dir)))
            return generate_text(trained, tokenizer, [student], max_new_tokens, names=["the prompt"])[0]

        answers["trained"] = timed("trained", 0.75, trained_answer)
    return answers


_chat_models: dict = {}  # one loaded (model, adapter) at a time: chat turns reuse it
_chat_lock = threading.Lock()


def _chat_model(model: str, run_dir: Path | None):
    from .models import load_adapter, load_model

    key = (model, str(run_dir))
    with _chat_lock:
        if key not in _chat_models:
            _chat_models.clear()  # free the previous model before loading the next
            config = run_config(run_dir).model if run_dir is not None else Config().replace(model=model).model
            _chat_models[key] = load_adapter(adapter_dir(run_dir), config) if run_dir is not None \
                else load_model(config.model, config)
        return _chat_models[key]


def chat_answer(messages: list[dict], *, model: str = "embedded", run_dir: Path | None = None,
                demonstration: str | None = None, template: str = TEMPLATES["paper"], max_new_tokens: int = 96,
                temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                stop: tuple[str, ...] = ()) -> Iterator[str]:
    """The answer to a conversation (ending with a user turn) as it grows, from the base model, a run's
    trained adapter (`run_dir`), or the teacher: the base model shown `demonstration` in the last user
    turn, framed by `template`."""
    from .generation import stream_chat

    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise ValueError("type a message first")
    if demonstration is not None:
        if not demonstration.strip():
            raise ValueError("paste a demonstration for the teacher to see")
        messages = teacher_messages(Example(tuple(messages), demonstration), [demonstration], template)
    loaded, tokenizer = _chat_model(model, run_dir)
    yield from stream_chat(loaded, tokenizer, messages, max_new_tokens, temperature=temperature, top_p=top_p,
                           repetition_penalty=repetition_penalty, stop=stop)
