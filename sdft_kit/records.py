"""The step record: what one optimizer step reports, and the run directory's metrics.jsonl.

The trainer yields one `StepRecord` per step and appends it, as one JSON line, to
metrics.jsonl; the CLI prints it, the notebook dashboard and the app draw it (views.py),
experiments summarise it. Records stay plain dicts (JSON in, JSON out); these TypedDicts
are their documented shape.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:  # records are plain JSON: reading them needs no torch
    import torch


class SampleRecord(TypedDict):
    """One completion of the step's batch, token by token, with both distributions."""

    prompt: str | list
    source: str  # where the example came from, e.g. "demo.jsonl:3"
    token_ids: list[int]
    tokens: list[str]  # each token decoded alone (a byte-level piece of a character decodes to "\ufffd")
    pieces: list[str]  # what each token adds to the answer's text ("" for one ending inside a character); may be absent
    values: list[float]  # per-token divergence (SDFT) or NLL (SFT)
    in_loss: list[int]  # 1 where the token counts in the loss (SDFT skips the first few)
    student_logprob: list[float]  # log p_student(token)
    teacher_logprob: list[float] | None  # log p_teacher(token); None for SFT
    student_topk: list[list[list]]  # per position: [[token text, probability], ...], most likely first
    teacher_topk: list[list[list]] | None


class StepSeconds(TypedDict):
    rollout: float
    teacher: float
    student: float  # forward and backward
    optimizer: float
    total: float


class StepRecord(TypedDict, total=False):
    step: int  # 1-based count of optimizer steps
    steps: int  # the run's planned total
    method: str  # 'sdft' or 'sft'
    loss: float  # mean over the step's micro-batches
    mean_kl: float | None  # mean per-token divergence over every completion token (skipped ones too); None for SFT
    lr: float
    grad_norm: float  # before clipping
    is_weight: float | None  # mean importance weight of the loss tokens, for engines sampling from other weights
    tokens: int  # completion tokens in the step (over every process)
    engine: str | None  # the rollout engine that sampled ('hf' or 'vllm'; what 'auto' picked); None for SFT
    processes: int  # training processes (accelerate launch); 1 in a plain run
    global_batch: int  # records per optimizer step over every process: batch_size * grad_accum * processes
    seconds: StepSeconds
    elapsed_s: float  # training time of the run so far
    peak_mem_mb: float  # peak RSS on CPU, max allocated on CUDA
    sample: SampleRecord  # the batch's first completion
    label: str  # optional, for records made by hand (e.g. "before the update" in notebook 01)


def token_pieces(tokenizer, ids: list[int], context: int = 6) -> list[str]:
    """What each token adds to the decoded text, for display.

    A token that ends inside a character (byte-level BPE splits an emoji or an accented letter
    over several tokens) adds "" and the token that completes the character adds all of it,
    so "🙂" shows whole. Each token is decoded after a few tokens of `context`, which also keeps
    the leading space that SentencePiece tokenizers drop when a token is decoded alone."""
    pieces, pending = [], 0  # pending: tokens before this one still waiting for the end of their character
    for i in range(len(ids)):
        start = max(0, i - pending - context)
        head = tokenizer.decode(ids[start:i - pending])
        text = tokenizer.decode(ids[start:i + 1])
        if text.endswith("\ufffd") and i < len(ids) - 1:
            pieces.append("")
            pending += 1
            continue
        pieces.append(text[len(head):] if text.startswith(head) else tokenizer.decode(ids[i - pending:i + 1]))
        pending = 0
    return pieces


def sample_record(tokenizer, example, batch, student, teacher, row: int = 0) -> SampleRecord:
    """What the views need about one completion of `batch`: its tokens and both distributions.

    `student` is the objective's StudentScores, `teacher` its TeacherScores (None for SFT).
    """
    keep = batch.completion_mask[row].bool()
    ids = batch.completion_ids[row][keep].tolist()

    def topk(top_ids: torch.Tensor, top_logprobs: torch.Tensor) -> list:
        return [[[tokenizer.decode([t]), round(float(p), 5)] for t, p in zip(i.tolist(), l.exp().tolist())]
                for i, l in zip(top_ids[row][keep], top_logprobs[row][keep])]

    def floats(t: torch.Tensor) -> list[float]:
        return [round(float(x), 5) for x in t[row][keep].tolist()]

    return {
        "prompt": example.prompt,
        "source": example.source,
        "token_ids": ids,
        "tokens": [tokenizer.decode([t]) for t in ids],
        "pieces": token_pieces(tokenizer, ids),
        "values": floats(student.per_token),
        "in_loss": [int(x) for x in student.mask[row][keep].tolist()],
        "student_logprob": floats(student.sampled_logprobs),
        "teacher_logprob": floats(teacher.sampled_logprobs) if teacher else None,
        "student_topk": topk(student.top_ids, student.top_logprobs),
        "teacher_topk": topk(teacher.top_ids, teacher.top_logprobs) if teacher else None,
    }


def append_record(path: str | Path, record: StepRecord) -> None:
    """Append one record to a metrics.jsonl as one line, whole: one write of the full line, then fsync.

    If the write fails (a full disk writes part of a line, then fails), the file is cut back to where
    it was, so no torn line is left for a later read to trip over."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            while written < len(line):  # only a short write (full disk) gets here; the next write raises
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, end)
            raise
    finally:
        os.close(fd)


def read_metrics(path: str | Path) -> tuple[list[StepRecord], list[int]]:
    """The records of a metrics.jsonl, and the byte offset where each one's line ends.

    A last line cut short (no newline, or not JSON: a crash or a full disk during its write) is dropped
    with a warning; a damaged line before the last is an error naming it."""
    data = Path(path).read_bytes()
    *whole, tail = data.split(b"\n")  # tail: what follows the last newline, empty unless a write was cut short
    torn = (len(whole) + 1, tail, "no newline at its end") if tail.strip() else None
    records, ends, end = [], [], 0
    for number, line in enumerate(whole, start=1):
        end += len(line) + 1
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
            ends.append(end)
        except ValueError as err:
            if torn or any(rest.strip() for rest in whole[number:]):
                raise ValueError(f"{path}, line {number}: not a whole JSON record ({err}); the file is damaged: "
                                 "remove that line") from None
            torn = (number, line, str(err))
    if torn:
        number, line, why = torn
        warnings.warn(f"{path}: dropped a torn last line (line {number}, {len(line)} bytes, {why}), left by a write "
                      "cut short by a crash or a full disk")
    return records, ends


def load_records(run_dir: str | Path) -> list[StepRecord]:
    """The step records of a run directory (none yet: an empty list), for re-plotting a run."""
    path = Path(run_dir) / "metrics.jsonl"
    return read_metrics(path)[0] if path.exists() else []
