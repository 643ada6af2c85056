"""Is the model a good teacher of itself? A one-minute check before hours of SDFT.

SDFT only works when the model with a demonstration in context answers better than
without it (the paper found 3B-class models too weak; Qwen2.5-7B went from 42% to 100%
on its tool-use task). On a sample of records, for each teacher template:

  (a) the mean per-token log-prob of the demonstration (+ EOS), teacher-forced, after
      the student prompt vs after the teacher prompt, and on how many records the
      teacher is better. The teacher sees the record's own demonstration, as in the
      paper, so copying it is easy; hence (c);
  (b) with a scorer `(answer, example) -> bool`: accuracy of greedy answers from the
      query alone vs with the demonstration in context;
  (c) how often greedy teacher answers echo the template's words or copy the demonstration;
  (d) a verdict (ready / weak / not ready) with advice, from `judge`.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .batch import mean_logprobs
from .chat import generate_text
from .config import TEMPLATES
from .data import Example
from .demos import student_prompt, teacher_prompt
from .models import eval_mode
from .text import normalize
from .text import words as text_words

# Verdict thresholds (see `judge`). Gains are in nats per demonstration token.
READY_SHARE = 0.8  # teacher better on at least 80% of records...
READY_GAIN = 0.3  # ...by at least 0.3 nats/token on average...
MAX_ECHO = 0.2  # ...with fewer than 20% of answers echoing the template...
READY_ACCURACY_LIFT = 0.10  # ...and, when scored, at least 10 points more accurate
WEAK_SHARE = 0.5  # weak: some signal (gain > 0, better on half); else not ready
COPY_NOTE = 0.5  # copying on half the answers earns a note, not a worse verdict
ECHO_WINDOW = 40  # an echo must start within the answer's first 40 characters
ECHO_WORDS = 6  # ...and run for 6 words of the template (or a whole shorter phrase of 3+)
COPY_WORDS = 12  # a copy is the whole demonstration, or 12 words of it in a row
MIN_COPY_WORDS = 5  # shorter demonstrations are too generic to call a copy

Scorer = Callable[[str, Example], bool]


def exact_scorer(answer: str, example: Example) -> bool:
    """Correct if the answer equals the demonstration, up to case, whitespace, punctuation and articles."""
    return normalize(answer) == normalize(example.demonstration)


def contains_scorer(answer: str, example: Example) -> bool:
    """Correct if the answer contains the demonstration, up to case, whitespace, punctuation and articles."""
    return normalize(example.demonstration) in normalize(answer)


SCORERS: dict[str, Scorer] = {"exact": exact_scorer, "contains": contains_scorer}


def template_phrases(template: str) -> list[list[str]]:
    """The template's own words, as the phrases between its slots (a name is looked up in TEMPLATES)."""
    text = TEMPLATES.get(template, template)
    parts = re.split(r"\{(?:prompt|demonstration)\}", text)
    return [found for part in parts if (found := [w[0] for w in text_words(part)])]


def echo_span(answer: str, template: str) -> tuple[int, int] | None:
    """Character span of the answer that echoes the template's own words, or None.

    An echo is a run of words (case and punctuation ignored) found in a row in one of the
    template's phrases, starting within the answer's first ECHO_WINDOW characters, at
    least ECHO_WORDS long, or a whole phrase of 3 to 5 words. The span is the longest such run.
    """
    words = text_words(answer)
    tokens = [w[0] for w in words]
    best = None
    for phrase in template_phrases(template):
        need = min(ECHO_WORDS, len(phrase))
        if need < 3:
            continue
        for i, start in enumerate(words):
            if start.start() >= ECHO_WINDOW:
                break
            for j in range(len(phrase) - need + 1):
                run = 0
                while i + run < len(tokens) and j + run < len(phrase) and tokens[i + run] == phrase[j + run]:
                    run += 1
                if run >= need and (best is None or run > best[0]):
                    best = (run, start.start(), words[i + run - 1].end())
    return None if best is None else (best[1], best[2])


def echoes(answer: str, template: str) -> bool:
    """Whether the answer opens by echoing the template's words (see `echo_span`)."""
    return echo_span(answer, template) is not None


def copies(answer: str, demonstration: str) -> bool:
    """Whether the answer copies the demonstration verbatim (case and punctuation ignored).

    True when the demonstration has at least MIN_COPY_WORDS words and the answer contains
    all of them in a row, or any COPY_WORDS of them in a row (answers are cut at
    max_new_tokens, so a long demonstration cannot appear whole).
    """
    demo = [w[0] for w in text_words(demonstration)]
    if len(demo) < MIN_COPY_WORDS:
        return False
    text = " " + " ".join(w[0] for w in text_words(answer)) + " "
    need = min(COPY_WORDS, len(demo))
    return any(" " + " ".join(demo[i:i + need]) + " " in text for i in range(len(demo) - need + 1))


@dataclass
class TemplateResult:
    """The figures for one teacher template; `verdict` and `advice` come from `judge`."""

    template: str  # 'paper', 'plain', 'system', or 'customN' for a template text
    records: int
    student_logprob: float  # mean per-token log-prob of the demonstration after the student prompt
    teacher_logprob: float  # ...after the teacher prompt
    teacher_better: int  # records where the teacher's is higher
    echo_rate: float  # share of greedy teacher answers echoing the template (`echoes`)
    copy_rate: float  # share copying the demonstration (`copies`)
    echo_tokens: int = 0  # answer tokens up to the end of the longest echo (a skip_first that covers it)
    student_accuracy: float | None = None  # with a scorer only
    teacher_accuracy: float | None = None
    verdict: str = ""
    advice: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # per record: source, log-probs, answer, echo, copy, correct

    @property
    def gain(self) -> float:
        return self.teacher_logprob - self.student_logprob

    @property
    def share_better(self) -> float:
        return self.teacher_better / max(self.records, 1)


def template_label(template: str) -> str:
    """A template's name in TEMPLATES (given its name or its text), else 'custom'."""
    return next((name for name, text in TEMPLATES.items() if template in (name, text)), "custom")


def judge(r: TemplateResult, skip_first: int = 3) -> tuple[str, list[str]]:
    """Verdict and advice from one template's figures.

    ready      teacher better on >= READY_SHARE of records, gain >= READY_GAIN nats/token,
               echo < MAX_ECHO, and when scored teacher accuracy >= student's + READY_ACCURACY_LIFT;
    weak       otherwise, if gain > 0 and the teacher is better on >= WEAK_SHARE of records;
    not ready  otherwise.
    Copying the demonstration never lowers the verdict: with the record's own demonstration in
    context it is expected, so it only earns a note.
    """
    scored = r.teacher_accuracy is not None and r.student_accuracy is not None
    signal = r.share_better >= READY_SHARE and r.gain >= READY_GAIN
    accurate = not scored or r.teacher_accuracy >= r.student_accuracy + READY_ACCURACY_LIFT
    if signal and accurate and r.echo_rate < MAX_ECHO:
        verdict = "ready"
    elif r.gain > 0 and r.share_better >= WEAK_SHARE:
        verdict = "weak"
    else:
        verdict = "not ready"
    advice = []
    larger = ("a larger model (e.g. --model Qwen/Qwen3-4B, 4-bit on a GPU: the paper found 3B-class models "
              "too weak to teach themselves)")
    if not signal:
        advice.append(f"The demonstration helps the teacher {'little' if r.gain > 0 else 'not at all'} "
                      f"({r.gain:+.2f} nats/token, better on {r.teacher_better}/{r.records} records): try {larger}.")
    if not accurate:
        advice.append(f"With the demonstration in context the teacher answers {r.teacher_accuracy:.0%} correctly, "
                      f"{r.student_accuracy:.0%} from the query alone: try another template or {larger}.")
    if r.echo_rate >= MAX_ECHO:
        fixes = [] if r.template == "plain" else ["--template plain (it adds no words to echo)"]
        if r.echo_tokens > skip_first:
            fixes.append(f"--skip-first {r.echo_tokens} (now {skip_first}) so the loss skips the echoed tokens")
        advice.append(f"{r.echo_rate:.0%} of teacher answers open by echoing the template's words, a leak the "
                      f"student would learn" + (": try " + ", or ".join(fixes) if fixes else "") + ".")
    if r.copy_rate >= COPY_NOTE:
        advice.append(f"{r.copy_rate:.0%} of teacher answers copy the demonstration: expected with demo_selection "
                      "'own' (the teacher sees the answer), and it pulls the student towards the demonstration's "
                      "wording, much like SFT. For answers in the teacher's own words try --demo-selection retrieval.")
    return verdict, advice


_RANK = {"ready": 2, "weak": 1, "not ready": 0}


@dataclass
class TeacherCheck:
    """The check's result: per-template figures, the best template's verdict, and advice."""

    records: int
    max_new_tokens: int
    scorer: str | None  # 'exact', 'contains', 'custom' or None (accuracy not measured)
    results: list[TemplateResult]
    best: str  # the template that teaches best (highest verdict, then accuracy, then gain)
    verdict: str
    advice: list[str]
    seconds: float

    def to_dict(self) -> dict:
        return {**asdict(self), "results": [{**asdict(r), "gain": r.gain, "share_better": r.share_better}
                                            for r in self.results]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    def summary(self) -> str:
        """One paragraph: verdict, the numbers behind it, what to try."""
        r = next(r for r in self.results if r.template == self.best)
        which = f"template '{r.template}'" + (f", best of {len(self.results)}" if len(self.results) > 1 else "")
        accuracy = ("accuracy not measured (no scorer)" if r.teacher_accuracy is None else
                    f"accuracy {r.student_accuracy:.0%} from the query alone, {r.teacher_accuracy:.0%} with it")
        return (f"Teacher check ({self.records} records, {which}): {self.verdict.upper()}. The demonstration in "
                f"context raises its own mean token log-prob from {r.student_logprob:.2f} to {r.teacher_logprob:.2f} "
                f"(better on {r.teacher_better}/{r.records} records); {r.echo_rate:.0%} of greedy teacher answers "
                f"echo the template, {r.copy_rate:.0%} copy the demonstration; {accuracy}."
                + ("" if not self.advice else " Try: " + " ".join(self.advice)))

    def table(self) -> str:
        """The figures of every template, then the verdict and advice, for printing."""
        lines = [f"Teacher check: {self.records} records, greedy answers of up to {self.max_new_tokens} tokens, "
                 f"{self.seconds:.0f} s",
                 f"{'':20}log-prob per demonstration token",
                 f"{'template':10}{'verdict':11}{'student':>8}{'teacher':>9}{'gain':>7}{'better':>8}{'echo':>7}"
                 f"{'copy':>7}   accuracy (query alone -> with demonstration)"]
        for r in self.results:
            accuracy = ("not scored" if r.teacher_accuracy is None
                        else f"{r.student_accuracy:.0%} -> {r.teacher_accuracy:.0%}")
            lines.append(f"{r.template:10}{r.verdict:11}{r.student_logprob:8.2f}{r.teacher_logprob:9.2f}"
                         f"{r.gain:+7.2f}{f'{r.teacher_better}/{r.records}':>8}{r.echo_rate:7.0%}{r.copy_rate:7.0%}"
                         f"   {accuracy}")
        best = f" (template '{self.best}'" + (" teaches best)" if len(self.results) > 1 else ")")
        lines += [f"verdict: {self.verdict.upper()}{best}", *(f"  - {line}" for line in self.advice)]
        if self.scorer is None:
            lines.append("  (accuracy not measured: add --scorer exact or contains if demonstrations are short answers)")
        return "\n".join(lines)


def _answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    return [text for i in range(0, len(prompts), batch_size)
            for text in generate_text(model, tokenizer, prompts[i:i + batch_size], max_new_tokens)]


def _figures(template: str, rows: list[dict], echo_tokens: int) -> TemplateResult:
    def mean(key: str) -> float:
        return sum(row[key] for row in rows) / len(rows)

    scored = rows[0]["teacher_correct"] is not None
    return TemplateResult(template, len(rows), mean("student_logprob"), mean("teacher_logprob"),
                          sum(row["teacher_logprob"] > row["student_logprob"] for row in rows), mean("echo"),
                          mean("copy"), echo_tokens, mean("student_correct") if scored else None,
                          mean("teacher_correct") if scored else None, rows=rows)


def check_teacher(model, tokenizer, examples: list[Example], *, templates: tuple[str, ...] | list[str] = tuple(TEMPLATES),
                  n: int = 32, max_new_tokens: int = 48, scorer: Scorer | str | None = None, seed: int = 0,
                  batch_size: int = 16, skip_first: int = 3) -> TeacherCheck:
    """Check on up to `n` records (a seeded sample) how well the model teaches itself.

    templates: names from TEMPLATES or template texts, compared on the same records
        (a text is reported as 'custom1', 'custom2'... by its position).
    scorer: 'exact', 'contains' or a callable (answer, example) -> bool; None skips (b).
    batch_size: prompts per greedy rollout (the teacher-forced passes use 8).
    skip_first: the loss's current skip, for the advice.
    The model is used as given (with a fresh LoRA adapter it computes as the base model),
    with each record's own demonstration in the teacher prompt, whatever demo_selection training uses.
    """
    if not examples or n < 1:
        raise ValueError(f"check_teacher needs at least one example and n >= 1; got {len(examples)} and n={n}")
    if not templates or len(set(templates)) != len(templates):
        raise ValueError(f"templates must be distinct, and at least one; got {list(templates)}")
    start = time.perf_counter()
    picked = [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), min(n, len(examples))))]
    demos = [ex.demonstration for ex in picked]
    score = SCORERS[scorer] if isinstance(scorer, str) else scorer
    with eval_mode(model):
        student_prompts = [student_prompt(tokenizer, ex) for ex in picked]
        student_lp = mean_logprobs(model, tokenizer, student_prompts, demos)
        student_correct = [None] * len(picked)
        if score is not None:
            answers = _answers(model, tokenizer, student_prompts, max_new_tokens, batch_size)
            student_correct = [bool(score(a, ex)) for a, ex in zip(answers, picked)]
        results = []
        for position, template in enumerate(templates, start=1):
            prompts = [teacher_prompt(tokenizer, ex, [ex.demonstration], template) for ex in picked]
            teacher_lp = mean_logprobs(model, tokenizer, prompts, demos)
            answers = _answers(model, tokenizer, prompts, max_new_tokens, batch_size)
            spans = [echo_span(a, template) for a in answers]
            rows = [{"source": ex.source, "prompt": ex.prompt, "student_logprob": s, "teacher_logprob": t,
                     "teacher_answer": a, "echo": span is not None, "copy": copies(a, ex.demonstration),
                     "student_correct": sc, "teacher_correct": None if score is None else bool(score(a, ex))}
                    for ex, s, t, a, span, sc in zip(picked, student_lp, teacher_lp, answers, spans, student_correct)]
            # A skip_first that covers the echo: the answer's tokens up to the end of its longest echo.
            echo_tokens = max((len(tokenizer(a[:span[1]], add_special_tokens=False)["input_ids"])
                               for a, span in zip(answers, spans) if span), default=0)
            name = template_label(template)
            result = _figures(name if name != "custom" else f"custom{position}", rows, echo_tokens)
            result.verdict, result.advice = judge(result, skip_first)
            results.append(result)
    best = max(results, key=lambda r: (_RANK[r.verdict], r.teacher_accuracy or 0.0, r.gain))
    advice = list(best.advice)
    if len(results) > 1:
        advice.insert(0, f"Template '{best.template}' teaches best on this sample"
                         + (f": train with --template {best.template}." if best.template in TEMPLATES else "."))
    return TeacherCheck(records=len(picked), max_new_tokens=max_new_tokens,
                        scorer=scorer if isinstance(scorer, str) or scorer is None else "custom",
                        results=results, best=best.template, verdict=best.verdict, advice=advice,
                        seconds=round(time.perf_counter() - start, 2))


def quick_check(trainer) -> TeacherCheck:
    """The short check run before SDFT training (CLI and app): 8 records, the run's template.

    Runs on the trainer's fresh adapter (a no-op, so this is the base model as teacher)
    and saves teacher_check.json in the run directory, if there is one.
    """
    config = trainer.config
    check = check_teacher(trainer.model, trainer.tokenizer, trainer.examples, templates=[config.teacher.template],
                          n=8, max_new_tokens=min(32, config.rollout.max_new_tokens), seed=config.train.seed,
                          skip_first=config.loss.skip_first)
    if trainer.out_dir is not None:
        check.save(trainer.out_dir / "teacher_check.json")
    return check
