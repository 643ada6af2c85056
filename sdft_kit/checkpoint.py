"""What survives a crash: the run directory, its lock, its checkpoints, and writes that land whole or not at all.

A run directory (`sdft-kit train --out RUN`) holds
    run.json        marks the folder as an sdft-kit run (written first), with the data's fingerprint
    .lock           locked (flock) by the process training in it; the OS unlocks it when that process dies
    config.yaml     the run's settings; --resume may change only the RESUMABLE ones, and records them here
    metrics.jsonl   one record per completed step, each line written whole and fsynced (records.py)
    checkpoint/     the state after the newest checkpointed step (by default every step)
    adapter/        the final adapter (PEFT format)

A checkpoint (or the final adapter) is written to checkpoint.tmp/, every file fsynced, then sealed with
complete.json (each file's size), then moved into place by two renames, checkpoint/ -> checkpoint.old/
and checkpoint.tmp/ -> checkpoint/, each followed by an fsync of the run directory. A kill at any moment
leaves a complete checkpoint under one of the three names; resuming takes the newest complete one and
puts it back as checkpoint/ (`recover`). A checkpoint/ that is not complete was damaged after it was
written (a write never leaves one so): resuming falls back to a complete .old or .tmp, else refuses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from itertools import takewhile
from pathlib import Path

from safetensors import SafetensorError

from .config import Config, fields_by_section, flag
from .records import StepRecord, append_record, read_metrics

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None

RUN_FILE, LOCK_FILE, CONFIG_FILE, METRICS_FILE = "run.json", ".lock", "config.yaml", "metrics.jsonl"
CHECKPOINT, ADAPTER, COMPLETE = "checkpoint", "adapter", "complete.json"
# What --resume may change: how long and how the run goes on, not what it has learnt so far.
RESUMABLE = ("steps", "save_every", "max_bad_steps", "threads", "release_memory")


class RunDir:
    """A run directory opened for training: checked, locked, and (on resume) its newest checkpoint in place."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoint: Path | None = None  # what a resumed run loads; None: start from step 0
        self._lock = None

    @classmethod
    def open(cls, path: str | Path, config: Config, data: dict, *, resume: bool) -> RunDir:
        """Check and lock `path`, before any model is loaded.

        A new run needs a new or empty folder, or a run with no completed step (nothing to lose). A
        resumed run needs the same data (`data["sha256"]`, see data.fingerprint), and may change only
        the RESUMABLE settings. Nothing is written before these checks pass.
        """
        run = cls(path)
        if resume:
            require_run(run.path)
        else:
            run._refuse_foreign()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_error(run.path, err) from err
        run.acquire()
        try:
            if resume:
                run._resume(config, data)
            else:
                run._start(config, data)
        except BaseException:
            run.release()
            raise
        return run

    # -- the lock --
    def acquire(self) -> None:
        """Lock the run for this process (a no-op if it already holds it)."""
        if self._lock is not None or fcntl is None:
            return
        try:
            lock = open(self.path / LOCK_FILE, "a+")
        except OSError as err:  # a read-only folder
            raise disk_error(self.path / LOCK_FILE, err) from err
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            lock.close()
            who = ("another Trainer of this process (let its steps() finish, or close() it)"
                   if holder == str(os.getpid()) else f"another sdft-kit process (pid {holder or '?'})")
            raise RuntimeError(f"{self.path} is in use: {who} is training in it; wait for it to finish, "
                               "or choose another --out") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The lock held inside the block: taken if this process does not hold it yet, then given back."""
        taken = self._lock is None
        self.acquire()
        try:
            yield
        finally:
            if taken:
                self.release()

    # -- opening --
    def _refuse_foreign(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} is a file; --out needs a folder")
        others = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE) if self.path.is_dir() else []
        if others and not is_run(self.path):
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise FileExistsError(f"{self.path} is not empty and is not an sdft-kit run (it holds {shown}); choose a "
                                  "new or empty folder for --out (nothing was written)")

    def _start(self, config: Config, data: dict) -> None:
        metrics = self.path / METRICS_FILE
        if metrics.is_file() and metrics.stat().st_size or (self.path / CHECKPOINT).exists() \
                or newest_checkpoint(self.path) is not None:
            raise FileExistsError(f"{self.path} already holds a run; pass --resume to continue it, or choose another "
                                  "--out (nothing was overwritten)")
        self._refuse_foreign()  # again, now that no other process can write here
        write_atomic(self.path / RUN_FILE, json.dumps({"sdft_kit_run": 1, "data": data}))
        write_atomic(self.path / CONFIG_FILE, config.to_yaml())

    def _resume(self, config: Config, data: dict) -> None:
        saved, wanted = Config.load(self.path / CONFIG_FILE).to_dict(), config.to_dict()
        changes = {f.name: (saved[section][f.name], wanted[section][f.name]) for section, f in fields_by_section()
                   if saved[section][f.name] != wanted[section][f.name]}
        refused = [name for name in changes if name not in RESUMABLE]
        if refused:
            listed = ", ".join(f"{name} ({changes[name][0]!r} -> {changes[name][1]!r}, {flag(name)})" for name in refused)
            raise ValueError(f"{self.path}: --resume cannot change {listed}: a run keeps its model, LoRA shape and "
                             f"training settings (only {', '.join(RESUMABLE)} may change). Resume without those "
                             "flags, or start a new run in another --out")
        info = json.loads((self.path / RUN_FILE).read_text()) if (self.path / RUN_FILE).is_file() else {}
        trained_on = info.get("data") or {}
        if trained_on.get("sha256") not in (None, data["sha256"]):
            raise ValueError(f"{self.path}: the data differs from what this run was trained on ({trained_on['examples']} "
                             f"examples from {trained_on['source']}); --resume needs the same records. Pass that "
                             "data, or start a new run in another --out")
        self.checkpoint = recover(self.path)  # a damaged only checkpoint is refused here
        trained = complete_step(self.checkpoint) if self.checkpoint is not None else 0
        if config.train.steps < trained:
            # config.yaml, the model card and the records must tell the same story: a run is not shortened.
            raise ValueError(f"{self.path}: --steps {config.train.steps} is fewer than the {trained} steps this run "
                             f"has already trained; a run cannot be shortened (nothing was changed). Pass --steps "
                             f"{trained + 1} or more to train on, or use the run as it is")
        if changes or not trained_on:  # record what changed, and the data of runs made before run.json
            write_atomic(self.path / RUN_FILE, json.dumps({"sdft_kit_run": 1, "data": data}))
            write_atomic(self.path / CONFIG_FILE, config.to_yaml())

    # -- writing --
    def append_record(self, record: StepRecord) -> None:
        path = self.path / METRICS_FILE
        try:
            append_record(path, record)
        except OSError as err:
            raise disk_error(path, err) from err

    def trim_metrics(self, step: int) -> None:
        """Keep the records of steps up to `step` (the checkpoint's: later ones are redone, said in a warning);
        a torn line goes too."""
        path = self.path / METRICS_FILE
        if not path.is_file():
            return
        records, ends = read_metrics(path)
        kept = len(list(takewhile(lambda record: record["step"] <= step, records)))
        end = ends[kept - 1] if kept else 0
        if kept < len(records):
            first, last = records[kept]["step"], records[-1]["step"]
            steps = f"step {first}" if first == last else f"steps {first}-{last}"
            after = f"the checkpoint of step {step}" if step else "the start (there is no checkpoint)"
            warnings.warn(f"{path}: the records of {steps} were logged after the newest checkpoint; training "
                          f"continues from {after}, so those steps are trained again and their records replaced")
        if end < path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())

    def save(self, name: str, write: Callable[[Path], None], step: int) -> Path:
        """Write the folder `name` whole: `write` fills name.tmp/, which is fsynced, sealed and swapped in.

        If writing fails (a full disk), name.tmp/ is removed and the previous `name` stays as it was."""
        final, staging = self.path / name, self.path / f"{name}.tmp"
        with self.held():
            shutil.rmtree(staging, ignore_errors=True)
            try:
                staging.mkdir()
                write(staging)
                _seal(staging, step)
            except (OSError, RuntimeError, SafetensorError) as err:  # torch and safetensors wrap write errors
                error = disk_error(staging, err)  # the free space before the cleanup frees some
                shutil.rmtree(staging, ignore_errors=True)
                raise error from err
            _swap_in(staging, final)
        return final


# -- a training state in a checkpoint folder --
def write_state(folder: Path, model, optimizer, scheduler, teacher, progress: dict) -> None:
    """Fill a checkpoint folder: the adapter (PEFT), the optimizer, scheduler, teacher and RNG states (state.pt),
    and the data position and step (trainer_state.json). RunDir.save makes the folder whole."""
    import torch

    model.save_pretrained(folder / "adapter")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "teacher": teacher.state_dict(), "rng": torch.get_rng_state()}, folder / "state.pt")
    (folder / "trainer_state.json").write_text(json.dumps(progress))


def holds_lora_factors(checkpoint: Path, model) -> bool:
    """Whether a checkpoint's teacher state is the averaged LoRA factors (what 'ema' kept before it averaged the
    weights). False for an unreadable one: read_state then says what is wrong with it."""
    import torch

    from .models import lora_parameters

    try:
        state = torch.load(checkpoint / "state.pt", weights_only=False)
    except Exception:  # noqa: BLE001 (read_state reports a damaged checkpoint in one line)
        return False
    teacher = state.get("teacher", state.get("ema")) or {}
    return bool(teacher) and set(teacher) == set(lora_parameters(model))


def read_state(folder: Path, model, optimizer, scheduler, teacher) -> dict:
    """Load a checkpoint folder written by write_state into these objects; returns its progress (step, ...).
    A damaged folder raises ValueError with one line naming it."""
    import pickle

    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        weights = load_file(folder / "adapter" / "adapter_model.safetensors")
        state = torch.load(folder / "state.pt", weights_only=False)
        progress = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{folder} cannot be read ({reason}): it is damaged; start a new run in another "
                         "--out") from None
    set_peft_model_state_dict(model, weights)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    teacher.load_state_dict(state.get("teacher", state.get("ema")) or {})  # "ema": older checkpoints
    torch.set_rng_state(state["rng"])
    return progress


def is_run(path: str | Path) -> bool:
    """Whether `path` holds an sdft-kit run: run.json, or (a run of a version before run.json) config.yaml
    beside metrics.jsonl or a checkpoint."""
    path = Path(path)
    legacy = (path / CONFIG_FILE).is_file() and any((path / name).exists() for name in (METRICS_FILE, CHECKPOINT))
    return (path / RUN_FILE).is_file() or legacy


def require_run(path: str | Path) -> None:
    """FileNotFoundError, in one line, unless `path` is a run with its config.yaml (what --resume needs)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a run directory (no such folder); nothing to resume")
    if not is_run(path):
        raise FileNotFoundError(f"{path} is not an sdft-kit run (it has no run.json), so there is nothing to resume "
                                "(nothing was written); pass the folder of a run, or start a new run in a new or "
                                "empty --out")
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a run directory (config.yaml is missing); nothing to resume")


def mark_run(path: str | Path) -> Path:
    """Make `path` a run folder with no step yet, which a new Trainer may start in (the app prepares its runs so)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / RUN_FILE).is_file():
        write_atomic(path / RUN_FILE, json.dumps({"sdft_kit_run": 1}))
    return path


# -- checkpoints on disk --
def complete_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder (sealed, every file at its sealed size), else None."""
    marker = folder / COMPLETE
    try:
        if not marker.is_file():
            # Written before complete.json existed: such checkpoints were only ever renamed into place whole.
            legacy = folder / "trainer_state.json"
            return int(json.loads(legacy.read_text())["step"]) if folder.name == CHECKPOINT and legacy.is_file() else None
        info = json.loads(marker.read_text())
        for name, size in info["files"].items():
            if not (folder / name).is_file() or (folder / name).stat().st_size != size:
                return None
        return int(info["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def damage_of(folder: Path) -> str:
    """What makes a checkpoint folder incomplete, naming the file: missing, or not the size it was sealed with."""
    marker = folder / COMPLETE
    try:
        files = json.loads(marker.read_text())["files"]
    except FileNotFoundError:
        return f"{marker} is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{marker} is damaged"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is {path.stat().st_size} bytes, not the {size} it was written with"
    return f"{folder} is damaged"


def newest_checkpoint(run: str | Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint among checkpoint/, .old and .tmp; None if there is none."""
    run = Path(run)
    found = [(step, run / name) for name in (CHECKPOINT, f"{CHECKPOINT}.old", f"{CHECKPOINT}.tmp")
             if (step := complete_step(run / name)) is not None]
    return max(found, key=lambda item: item[0]) if found else None  # a tie keeps checkpoint/ (listed first)


def recover(run: str | Path) -> Path | None:
    """The newest complete checkpoint, moved back to checkpoint/ if a crash left it as .old or .tmp.

    A checkpoint/ that is there but not complete was damaged after it was written: the newest complete
    .old or .tmp is taken instead, with a warning; with none, ValueError names the damaged file."""
    newest, final = newest_checkpoint(run), Path(run) / CHECKPOINT
    if final.exists() and (newest is None or newest[1] != final):
        damage = damage_of(final)
        if newest is None:
            raise ValueError(f"{damage}: the run's only checkpoint is damaged, so --resume cannot continue the run "
                             "(nothing was changed). Put back an intact copy of that folder, or start a new run in "
                             "another --out")
        warnings.warn(f"{damage}: the newest checkpoint is damaged; resuming from the previous complete one, of "
                      f"step {newest[0]}")
    if newest is None:
        return None
    folder = newest[1]
    if folder.name.endswith(".tmp"):  # killed between the two renames, or before the first
        _swap_in(folder, final)
    elif folder != final:  # .old, with checkpoint/ missing or incomplete
        shutil.rmtree(final, ignore_errors=True)
        folder.rename(final)
        fsync_dir(final.parent)
    return final


def _seal(folder: Path, step: int) -> None:
    sizes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            sizes[path.relative_to(folder).as_posix()] = path.stat().st_size
        else:
            fsync_dir(path)
    with open(folder / COMPLETE, "w") as f:
        json.dump({"step": step, "files": sizes}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(folder)


def _swap_in(staging: Path, final: Path) -> None:
    old = final.with_name(f"{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
        fsync_dir(final.parent)
    staging.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


# -- durable small writes and their errors --
def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write a small file whole or not at all: a temporary file, fsynced, renamed over `path`."""
    staging = path.with_name(f"{path.name}.tmp")
    try:
        with open(staging, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        staging.replace(path)
        fsync_dir(path.parent)
    except OSError as err:
        staging.unlink(missing_ok=True)
        raise disk_error(path, err) from err


def disk_error(path: Path, err: BaseException) -> OSError:
    """One line for a failed write: the path, what is really wrong, and what to do about it."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    code = err.errno if isinstance(err, OSError) else None
    folder = next((p for p in (path, *path.parents) if p.exists()), None)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "the file system is read-only" if code == errno.EROFS else "permission denied"
        writable = path.parent if path.parent.exists() else folder
        return OSError(f"could not write {path}: {reason}; make {writable} writable (then continue the run with "
                       "--resume), or choose another --out")
    free = shutil.disk_usage(folder).free if folder else None
    # torch reports a full disk only as a failed write ("unexpected pos ..."): the free space tells.
    full = code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or free == 0
    reason = ("no space left on the device" if full
              else err.strerror if isinstance(err, OSError) and err.strerror else text)
    room = "free space unknown" if free is None else f"{_size(free)} free on that disk"
    what = "free some space" if full else "check that disk"
    return OSError(f"could not write {path}: {reason} ({room}); {what}, then continue the run with --resume")


def _size(n: float) -> str:
    units = ["bytes", "KiB", "MiB", "GiB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{n:.0f} bytes" if units[0] == "bytes" else f"{n:.1f} {units[0]}"
