"""The step record: what one optimizer step reports, and the run directory's metrics.jsonl.

The trainer yields one `StepRecord` per step and appends it, as one JSON line, to
metrics.jsonl; the CLI prints it, the notebook dashboard and the app draw it (views.py),
experiments summarise it. Records stay plain dicts (JSON in, JSON out); these TypedDicts
are their documented shape.
"""

from __future__ import annotations

import json
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
    tokens: int  # completion tokens in the step
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
    """Append one record to a metrics.jsonl as one line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def load_records(run_dir: str | Path) -> list[StepRecord]:
    """The step records of a run directory (none yet: an empty list), for re-plotting a run."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
