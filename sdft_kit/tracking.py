"""Experiment tracking: each step record's scalars and sampled completion, logged to trackio,
TensorBoard or Weights & Biases through their own libraries.

    with open_tracker(config, run_dir) as tracker:      # config.train.report_to picks the tracker
        for record in trainer.steps():
            tracker.log(record)

or `for record in tracker.track(trainer.steps())`, or `trainer.train(on_record=tracker.log)`.
The trainer knows nothing of trackers: whoever consumes the records (CLI, notebook, app,
experiments) wraps them. Each library is imported only when its tracker is opened
(`pip install 'sdft-kit[tracking]'` installs trackio and tensorboard).

    trackio      local-first: a SQLite database in trackio's folder (TRACKIO_DIR, default
                 ~/.cache/huggingface/trackio), project "sdft-kit", one run per run directory;
                 `trackio show` opens the dashboard. Nothing leaves the machine unless
                 TRACKIO_SPACE_ID or TRACKIO_SERVER_URL is set.
    tensorboard  event files in <run dir>/tensorboard (`tensorboard --logdir runs/`)
    wandb        the usual wandb login / WANDB_MODE (offline works)
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from .config import Config
from .records import StepRecord

PROJECT = "sdft-kit"
PACKAGES = {"trackio": "trackio", "tensorboard": "tensorboard", "wandb": "wandb"}
SAMPLE_COLUMNS = ["step", "source", "prompt", "completion", "mean_value"]


def resolve_report_to(report_to: str) -> str:
    """'auto' is trackio when it is installed, else 'none'; any other value is itself."""
    if report_to == "auto":
        return "trackio" if importlib.util.find_spec("trackio") is not None else "none"
    return report_to


def require_tracker(report_to: str) -> str:
    """The resolved tracker name; raises RuntimeError with the install command when its package is missing."""
    report_to = resolve_report_to(report_to)
    if report_to != "none" and importlib.util.find_spec(PACKAGES[report_to]) is None:
        raise RuntimeError(f"report_to={report_to!r} needs the {PACKAGES[report_to]} package: "
                           f"pip install 'sdft-kit[tracking]' (trackio, tensorboard) or pip install {report_to}; "
                           "or pass --report-to none")
    return report_to


def scalars(record: StepRecord) -> dict[str, float]:
    """The record's numbers, flat (seconds per phase as seconds/<phase>); fields that are None are left out."""
    flat = {key: record.get(key) for key in ("loss", "mean_kl", "lr", "grad_norm", "is_weight", "tokens",
                                             "elapsed_s", "peak_mem_mb")}
    flat.update({f"seconds/{phase}": value for phase, value in (record.get("seconds") or {}).items()})
    flat.update(monitor_scalars(record.get("monitor")))
    return {key: float(value) for key, value in flat.items() if value is not None}


def monitor_scalars(evaluation: dict | None) -> dict[str, float]:
    """The forgetting monitor's scores of one evaluation (monitor.py) as monitor/<name>; none if it did not run."""
    if not evaluation:
        return {}
    return {f"monitor/{key}": float(evaluation[key]) for key in ("prior_skills", "new_task", "seconds")}


def sample_row(record: StepRecord) -> list:
    """The step's sampled completion as a table row (SAMPLE_COLUMNS): its text and its mean divergence
    (SDFT) or NLL (SFT) over the tokens in the loss."""
    sample = record.get("sample") or {}
    values = [v for v, keep in zip(sample.get("values", []), sample.get("in_loss", [])) if keep]
    prompt = sample.get("prompt", "")
    return [record["step"], sample.get("source", ""), prompt if isinstance(prompt, str) else str(prompt),
            "".join(sample.get("tokens", [])), sum(values) / len(values) if values else None]


class Tracker:
    """Logs step records to one tracker; `log` each record, `close` at the end (or use it as a context)."""

    name = "none"

    def __init__(self) -> None:
        self.rows: list[list] = []

    def log(self, record: StepRecord) -> StepRecord:
        """Log one record (its scalars, and its sample as a one-row table); returns it, for chaining."""
        row = sample_row(record) if record.get("sample") else None
        self.rows += [row] if row else []
        if record.get("monitor_start"):  # the forgetting monitor's scores before step 1: the curves start there
            self._log(0, monitor_scalars(record["monitor_start"]), [])
        self._log(record["step"], scalars(record), [row] if row else [])
        return record

    def track(self, records: Iterable[StepRecord]) -> Iterator[StepRecord]:
        """The records, each logged as it passes."""
        for record in records:
            yield self.log(record)

    def close(self) -> None:
        """Log every step's sample as one table, then finish the run."""
        self._finish(self.rows)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # what each tracker does; the base class logs nothing (report_to 'none')
    def _log(self, step: int, values: dict[str, float], rows: list[list]) -> None:
        pass

    def _finish(self, rows: list[list]) -> None:
        pass


@contextlib.contextmanager
def _stdout_to_stderr():
    """trackio prints its banners to stdout; the CLI keeps stdout for one line per step."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class TrackioTracker(Tracker):
    name = "trackio"

    def __init__(self, run_name: str, config: dict, resume: bool, project: str = PROJECT):
        super().__init__()
        import trackio

        self.trackio = trackio
        with _stdout_to_stderr():
            # embed=False: no dashboard server started inside a notebook; `trackio show` opens one.
            self.run = trackio.init(project=project, name=run_name, config=config, embed=False,
                                    resume="allow" if resume else "never")

    def _log(self, step, values, rows):
        if rows:
            values = {**values, "samples": self.trackio.Table(columns=SAMPLE_COLUMNS, data=rows)}
        with _stdout_to_stderr():
            self.run.log(values, step=step)

    def _finish(self, rows):
        with _stdout_to_stderr():
            if rows:
                self.run.log({"all_samples": self.trackio.Table(columns=SAMPLE_COLUMNS, data=rows)},
                             step=rows[-1][0])
            self.trackio.finish()  # this run is trackio's current one: finishing it here stops its exit hook


def markdown_table(rows: list[list]) -> str:
    """Rows as a markdown table (TensorBoard's text plugin renders markdown)."""
    def cell(value) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", "↵ ")

    lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, log_dir: Path):
        super().__init__()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(str(log_dir))

    def _log(self, step, values, rows):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        if rows:
            self.writer.add_text("samples", markdown_table(rows), step)
        self.writer.flush()

    def _finish(self, rows):
        if rows:
            self.writer.add_text("all_samples", markdown_table(rows), rows[-1][0])
        self.writer.close()


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, run_name: str, config: dict, run_dir: Path | None, resume: bool, project: str = PROJECT):
        super().__init__()
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_name, config=config,
                              dir=str(run_dir) if run_dir else None, resume="allow" if resume else None)

    def _log(self, step, values, rows):
        if rows:
            values = {**values, "samples": self.wandb.Table(columns=SAMPLE_COLUMNS, data=rows)}
        self.run.log(values, step=step)

    def _finish(self, rows):
        if rows:
            self.run.log({"all_samples": self.wandb.Table(columns=SAMPLE_COLUMNS, data=rows)})
        self.run.finish()


def open_tracker(config: Config, run_dir: str | Path | None = None, *, name: str | None = None,
                 resume: bool = False, project: str | None = None) -> Tracker:
    """The tracker `config.train.report_to` names, started for one run (named after run_dir unless `name`),
    in `project` (trackio, wandb; default "sdft-kit": the app gives each login its own).

    Raises RuntimeError with the install command when the tracker's library is missing, before
    any model is loaded if called first. TensorBoard needs a run directory (it writes there)."""
    report_to = require_tracker(config.train.report_to)
    if report_to == "none":
        return Tracker()
    run_dir = Path(run_dir) if run_dir is not None else None
    run_name = name or (run_dir.name if run_dir is not None else None)
    if report_to == "trackio":
        return TrackioTracker(run_name, config.to_dict(), resume, project or PROJECT)
    if report_to == "wandb":
        return WandbTracker(run_name, config.to_dict(), run_dir, resume, project or PROJECT)
    if run_dir is None:
        raise ValueError("report_to='tensorboard' writes into the run directory: give one (out_dir)")
    return TensorBoardTracker(run_dir / "tensorboard")
