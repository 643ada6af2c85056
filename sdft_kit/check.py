"""Is the model a good teacher of itself? A one-minute check before hours of SDFT.

SDFT only works when the model with a demonstration in context answers better than
without it (the paper found 3B-class models too weak; Qwen2.5-7B went from 42% to 100%
on its tool-use task). On a sample of records, for each teacher template:

  (a) answer quality: greedy answers from the query alone (student) and with the record's
      own demonstration in context (teacher), compared with the demonstration by ROUGE-L F1
      (`similarity`); with a scorer `(answer, example) -> bool`, their accuracy instead;
  (b) the mean per-token log-prob of the demonstration (+ EOS), teacher-forced, after the
      student prompt vs after the teacher prompt, on how many records the teacher is better,
      and a control: the same after a teacher prompt holding *another* record's demonstration
      (a teacher that gains as much from a wrong demonstration reads its format, not its content);
  (c) how often greedy teacher answers echo the template's words or copy the demonstration;
  (d) a verdict (ready / weak / not ready) with advice, from `judge`.

A log-prob lift alone is not enough for READY: the demonstration sits in the teacher's
context, so its tokens get likelier even when the teacher's own answers stay poor (the
embedded model on the paper's tool-use data: +0.9 nats/token on every record, 9% right).
"""

from __future__ import annotations

import functools
import json
import random
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .batch import mean_logprobs
from .generation import TooLong, generate_text, prompt_tokens, require_fit
from .config import TEMPLATES, flag
from .data import Example
from .demos import student_prompt, teacher_prompt
from .evaluate import parse_tool_call
from .models import eval_mode
from .text import normalize
from .text import words as text_words

# Verdict thresholds (see `judge`; how they were calibrated: README, "Is my model a good teacher?").
# Answer quality comes first: READY needs the teacher's own greedy answers to be good, not only
# the demonstration's tokens to get likelier in its context.
READY_SIMILARITY = 0.5  # ROUGE-L F1 of the teacher's answers to the demonstration, at least...
READY_SIMILARITY_LIFT = 0.15  # ...and that much above the student's (no scorer)
READY_ACCURACY = 0.5  # with a scorer: the teacher right on at least half the records...
READY_ACCURACY_LIFT = 0.10  # ...and at least 10 points more often than the student
READY_SHARE = 0.8  # the log-prob signal: teacher better on at least 80% of records...
READY_GAIN = 0.3  # ...by at least 0.3 nats per demonstration token...
READY_CONTENT_GAIN = 0.1  # ...of which this much more than another record's demonstration gives (the control)
MAX_ECHO = 0.2  # fewer than 20% of teacher answers echoing the template
WEAK_SHARE = 0.5  # weak: some signal (gain > 0, better on half); else not ready
COPY_NOTE = 0.5  # copying on half the answers earns a note, not a worse verdict
ECHO_WINDOW = 40  # an echo must start within the answer's first 40 characters
ECHO_WORDS = 6  # ...and run for 6 words of the template (or a whole shorter phrase of 3+)
COPY_WORDS = 12  # a copy is the whole demonstration, or 12 words of it in a row
MIN_COPY_WORDS = 5  # shorter demonstrations are too generic to call a copy

Scorer = Callable[[str, Example], bool]
Progress = Callable[[int, int], None]  # (greedy answers done, answers in all): what takes the check's time


def exact_scorer(answer: str, example: Example) -> bool:
    """Correct if the answer equals the demonstration, up to case, whitespace, punctuation and articles."""
    return normalize(answer) == normalize(example.demonstration)


def contains_scorer(answer: str, example: Example) -> bool:
    """Correct if the answer contains the demonstration, up to case, whitespace, punctuation and articles."""
    return normalize(example.demonstration) in normalize(answer)


def tool_scorer(answer: str, example: Example) -> bool:
    """Correct if the answer's first `Action:` / `Action Input:` equal the demonstration's (the tool-use score)."""
    call = parse_tool_call(answer)
    return call is not None and call == parse_tool_call(example.demonstration)


SCORERS: dict[str, Scorer] = {"exact": exact_scorer, "contains": contains_scorer, "tool": tool_scorer}


@functools.cache
def _rouge():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"])


def similarity(answer: str, reference: str) -> float:
    """ROUGE-L F1 of an answer against a reference (rouge-score, lowercased words, no stemming), 0 to 1.

    Longest common subsequence of words: word order counts, wording and length too (an answer
    that rambles past the reference loses precision). 0 when either text has no words.
    """
    return _rouge().score(reference, answer)["rougeL"].fmeasure


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
    student_similarity: float | None = None  # mean ROUGE-L F1 of greedy answers to the demonstration
    teacher_similarity: float | None = None
    control_logprob: float | None = None  # ...after a teacher prompt holding another record's demonstration
    verdict: str = ""
    advice: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # per record: source, log-probs, answers, similarity, echo, copy

    @property
    def gain(self) -> float:
        return self.teacher_logprob - self.student_logprob

    @property
    def control_gain(self) -> float | None:
        """The log-prob lift another record's demonstration gives (format, not content)."""
        return None if self.control_logprob is None else self.control_logprob - self.student_logprob

    @property
    def share_better(self) -> float:
        return self.teacher_better / max(self.records, 1)

    @property
    def scored(self) -> bool:
        return self.teacher_accuracy is not None and self.student_accuracy is not None

    def quality(self) -> tuple[str, float | None, float | None]:
        """The answer-quality measure the verdict uses: ('accuracy' or 'similarity', student's, teacher's)."""
        if self.scored:
            return "accuracy", self.student_accuracy, self.teacher_accuracy
        return "similarity", self.student_similarity, self.teacher_similarity


def template_label(template: str) -> str:
    """A template's name in TEMPLATES (given its name or its text), else 'custom'."""
    return next((name for name, text in TEMPLATES.items() if template in (name, text)), "custom")


def _quality_text(r: TemplateResult, named: bool = True) -> str:
    """'accuracy 0% -> 19%' or 'ROUGE-L F1 0.41 -> 0.58 (+0.17)': student's, then teacher's (named: with the measure)."""
    measure, student, teacher = r.quality()
    if teacher is None:
        return "not measured"
    if measure == "accuracy":
        return ("accuracy " if named else "") + f"{student:.0%} -> {teacher:.0%}"
    return ("ROUGE-L F1 " if named else "") + f"{student:.2f} -> {teacher:.2f} ({teacher - student:+.2f})"


def judge(r: TemplateResult, skip_first: int = 3) -> tuple[str, list[str]]:
    """Verdict and advice from one template's figures.

    ready      the teacher's greedy answers are good and better than the student's: with a scorer,
               accuracy >= READY_ACCURACY and >= the student's + READY_ACCURACY_LIFT; without one,
               ROUGE-L F1 to the demonstration >= READY_SIMILARITY and >= the student's +
               READY_SIMILARITY_LIFT; and the log-prob signal holds: better on >= READY_SHARE of
               records by >= READY_GAIN nats/token, READY_CONTENT_GAIN of it more than another
               record's demonstration gives (the control); and echo < MAX_ECHO;
    weak       otherwise, if gain > 0 and the teacher is better on >= WEAK_SHARE of records;
    not ready  otherwise.
    Copying the demonstration never lowers the verdict: with the record's own demonstration in
    context it is expected, so it only earns a note.
    """
    measure, student, teacher = r.quality()
    if measure == "accuracy":
        good_answers = teacher >= READY_ACCURACY and teacher >= student + READY_ACCURACY_LIFT
    else:
        good_answers = teacher is not None and teacher >= READY_SIMILARITY and teacher >= student + READY_SIMILARITY_LIFT
    signal = r.share_better >= READY_SHARE and r.gain >= READY_GAIN
    content = r.control_gain is None or r.gain - r.control_gain >= READY_CONTENT_GAIN
    if good_answers and signal and content and r.echo_rate < MAX_ECHO:
        verdict = "ready"
    elif r.gain > 0 and r.share_better >= WEAK_SHARE:
        verdict = "weak"
    else:
        verdict = "not ready"
    advice = []
    larger = ("a larger model (e.g. Qwen/Qwen3-4B, 4-bit on a GPU: the paper found 3B-class models too weak "
              "to teach themselves)")
    if not good_answers and teacher is not None:
        need = (f"{READY_ACCURACY:.0%} and {READY_ACCURACY_LIFT * 100:.0f} points more" if measure == "accuracy"
                else f"{READY_SIMILARITY:.2f} and +{READY_SIMILARITY_LIFT:.2f}")
        advice.append(f"With the demonstration in context the teacher's own answers are not good enough "
                      f"({_quality_text(r)} from the query alone -> with it; READY needs {need}): "
                      f"try another template or {larger}.")
    if not signal:
        advice.append(f"The demonstration helps the teacher {'little' if r.gain > 0 else 'not at all'} "
                      f"({r.gain:+.2f} nats/token, better on {r.teacher_better}/{r.records} records): try {larger}.")
    elif not content:
        advice.append(f"Another record's demonstration lifts the teacher almost as much ({r.control_gain:+.2f} vs "
                      f"{r.gain:+.2f} nats/token): it reads the demonstrations' format, not their content.")
    if r.echo_rate >= MAX_ECHO:
        fixes = [] if r.template == "plain" else ["the template 'plain' (it adds no words to echo)"]
        if r.echo_tokens > skip_first:
            fixes.append(f"skipping the first {r.echo_tokens} answer tokens in the loss (skip_first {r.echo_tokens}, "
                         f"now {skip_first}) so it leaves out the echoed ones")
        advice.append(f"{r.echo_rate:.0%} of teacher answers open by echoing the template's words, a leak the "
                      f"student would learn" + (": try " + ", or ".join(fixes) if fixes else "") + ".")
    if r.copy_rate >= COPY_NOTE:
        advice.append(f"{r.copy_rate:.0%} of teacher answers copy the demonstration: expected with demo_selection "
                      "'own' (the teacher sees the answer), and it pulls the student towards the demonstration's "
                      "wording, much like SFT. For answers in the teacher's own words try showing the most similar "
                      "other record's demonstration (demo_selection 'retrieval').")
    return verdict, advice


def advised_settings(r: TemplateResult, skip_first: int = 3, compared: bool = False) -> dict:
    """The config fields that act on `judge`'s advice for this template: what one click in the app applies.

    An echo is answered with the plain template (unless templates were compared, so the best one
    stands, or it is already plain), else with a skip_first that covers it; copying with retrieved
    demonstrations. "Try a larger model" is advice no setting can take."""
    settings: dict = {}
    if r.echo_rate >= MAX_ECHO:
        if r.template != "plain" and not compared:
            settings["template"] = "plain"
        elif r.echo_tokens > skip_first:
            settings["skip_first"] = r.echo_tokens
    if r.copy_rate >= COPY_NOTE:
        settings["demo_selection"] = "retrieval"
    return settings


_RANK = {"ready": 2, "weak": 1, "not ready": 0}


@dataclass
class TeacherCheck:
    """The check's result: per-template figures, the best template's verdict, and advice."""

    records: int
    max_new_tokens: int
    scorer: str | None  # 'exact', 'contains', 'tool', 'custom' or None (answer quality by ROUGE-L F1)
    results: list[TemplateResult]
    best: str  # the template that teaches best (highest verdict, then answer quality, then gain)
    verdict: str
    advice: list[str]
    seconds: float
    settings: dict = field(default_factory=dict)  # config fields that act on the advice (`advised_settings`)

    def to_dict(self) -> dict:
        return {**asdict(self), "results": [{**asdict(r), "gain": r.gain, "control_gain": r.control_gain,
                                             "share_better": r.share_better} for r in self.results]}

    @classmethod
    def from_dict(cls, data: dict) -> TeacherCheck:
        """The check `to_dict` wrote (a run's teacher_check.json), e.g. to show its verdict again."""
        derived = ("gain", "control_gain", "share_better")
        results = [TemplateResult(**{k: v for k, v in r.items() if k not in derived}) for r in data["results"]]
        return cls(**{**data, "results": results})

    @classmethod
    def load(cls, path: str | Path) -> TeacherCheck:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    def summary(self) -> str:
        """One paragraph: verdict, the numbers behind it, what to try."""
        r = next(r for r in self.results if r.template == self.best)
        which = f"template '{r.template}'" + (f", best of {len(self.results)}" if len(self.results) > 1 else "")
        control = ("" if r.control_gain is None else
                   f", {r.control_gain:+.2f} with another record's demonstration (control)")
        return (f"Teacher check ({self.records} records, {which}): {self.verdict.upper()}. Greedy answers vs the "
                f"demonstration, from the query alone -> with it in context: {_quality_text(r)}. Its mean token "
                f"log-prob rises {r.gain:+.2f} nats with its own demonstration (better on {r.teacher_better}/"
                f"{r.records} records){control}; {r.echo_rate:.0%} of teacher answers echo the template, "
                f"{r.copy_rate:.0%} copy the demonstration."
                + ("" if not self.advice else " Try: " + " ".join(self.advice)))

    def table(self) -> str:
        """The figures of every template, then the verdict and advice, for printing."""
        measure = "accuracy" if self.scorer else "ROUGE-L F1 to the demonstration"
        lines = [f"Teacher check: {self.records} records, greedy answers of up to {self.max_new_tokens} tokens, "
                 f"{self.seconds:.0f} s",
                 f"{'':20}log-prob per demonstration token{'':14}greedy answers",
                 f"{'template':10}{'verdict':11}{'student':>8}{'teacher':>9}{'gain':>7}{'control':>9}{'better':>8}"
                 f"{'echo':>7}{'copy':>7}   {measure} (query alone -> with demonstration)"]
        for r in self.results:
            control = "" if r.control_gain is None else f"{r.control_gain:+.2f}"
            lines.append(f"{r.template:10}{r.verdict:11}{r.student_logprob:8.2f}{r.teacher_logprob:9.2f}"
                         f"{r.gain:+7.2f}{control:>9}{f'{r.teacher_better}/{r.records}':>8}{r.echo_rate:7.0%}"
                         f"{r.copy_rate:7.0%}   {_quality_text(r, named=False)}")
        best = f" (template '{self.best}'" + (" teaches best)" if len(self.results) > 1 else ")")
        lines += [f"verdict: {self.verdict.upper()}{best}", *(f"  - {line}" for line in self.advice)]
        if self.settings:
            lines.append("  settings that take the advice: " + " ".join(
                f"{flag(name)} {value}" for name, value in self.settings.items()))
        lines.append("  (control: the log-prob gain when the teacher is shown another record's demonstration; "
                     + ("READY needs accuracy >= "
                        f"{READY_ACCURACY:.0%} and +{READY_ACCURACY_LIFT * 100:.0f} points)" if self.scorer else
                        f"READY needs ROUGE-L F1 >= {READY_SIMILARITY:.2f} and +{READY_SIMILARITY_LIFT:.2f}; "
                        "--scorer exact, contains or tool scores right answers instead)"))
        return "\n".join(lines)


def _answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
             advance: Callable[[int], None]) -> list[str]:
    answers = []
    for i in range(0, len(prompts), batch_size):
        answers += generate_text(model, tokenizer, prompts[i:i + batch_size], max_new_tokens)
        advance(len(prompts[i:i + batch_size]))
    return answers


def _require_fit(model, tokenizer, picked: list[Example], others: list[str] | None, templates, max_new_tokens: int,
                 labels: list[str]) -> None:
    """TooLong, naming the record, unless each of its prompts fits the context with room for both what is scored
    after it (a demonstration) and what is generated (max_new_tokens): checked before any model call, as a
    200k-character record would otherwise take gigabytes in its first forward pass."""
    for i, ex in enumerate(picked):
        room = max(max_new_tokens, prompt_tokens(tokenizer, ex.demonstration))
        prompts = {"the student prompt": student_prompt(tokenizer, ex)}
        for template, label in zip(templates, labels):
            prompts[f"the teacher prompt ({label})"] = teacher_prompt(tokenizer, ex, [ex.demonstration], template)
            if others is not None:
                prompts[f"the control's teacher prompt ({label})"] = teacher_prompt(tokenizer, ex, [others[i]], template)
        for what, text in prompts.items():
            require_fit(model, prompt_tokens(tokenizer, text), room, f"{ex.source or f'record {i + 1}'}: {what}")


def _figures(template: str, rows: list[dict], echo_tokens: int) -> TemplateResult:
    def mean(key: str) -> float | None:
        values = [row[key] for row in rows if row[key] is not None]
        return sum(values) / len(values) if values else None

    return TemplateResult(template, len(rows), mean("student_logprob"), mean("teacher_logprob"),
                          sum(row["teacher_logprob"] > row["student_logprob"] for row in rows), mean("echo"),
                          mean("copy"), echo_tokens, mean("student_correct"), mean("teacher_correct"),
                          mean("student_similarity"), mean("teacher_similarity"), mean("control_logprob"), rows=rows)


def check_teacher(model, tokenizer, examples: list[Example], *, templates: tuple[str, ...] | list[str] = tuple(TEMPLATES),
                  n: int = 32, max_new_tokens: int = 48, scorer: Scorer | str | None = None, seed: int = 0,
                  batch_size: int = 8, skip_first: int = 3, progress: bool = True,
                  on_progress: Progress | None = None) -> TeacherCheck:
    """Check on up to `n` records (a seeded sample) how well the model teaches itself.

    templates: names from TEMPLATES or template texts, compared on the same records
        (a text is reported as 'custom1', 'custom2'... by its position).
    scorer: 'exact', 'contains', 'tool' or a callable (answer, example) -> bool: the verdict then
        judges answers by accuracy; None (default) judges them by ROUGE-L F1 to the demonstration.
    batch_size: prompts per greedy rollout and per teacher-forced pass.
    skip_first: the loss's current skip, for the advice.
    progress: a progress bar (tqdm) over the greedy answers, which take most of the time.
    on_progress: told (answers done, answers in all) after each batch of greedy answers (the app's time left).
    The model is used as given (with a fresh LoRA adapter it computes as the base model),
    with each record's own demonstration in the teacher prompt, whatever demo_selection training uses.
    The control shows record i the demonstration of the next sampled record (none with one record).
    """
    from tqdm.auto import tqdm

    if not examples or n < 1:
        raise ValueError(f"check_teacher needs at least one example and n >= 1; got {len(examples)} and n={n}")
    if not templates or len(set(templates)) != len(templates):
        raise ValueError(f"templates must be distinct, and at least one; got {list(templates)}")
    start = time.perf_counter()
    picked = [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), min(n, len(examples))))]
    demos = [ex.demonstration for ex in picked]
    others = demos[1:] + demos[:1] if len(picked) > 1 else None  # the control: each record sees the next one's
    score = SCORERS[scorer] if isinstance(scorer, str) else scorer
    labels = [template_label(t) if template_label(t) != "custom" else f"custom{position}"
              for position, t in enumerate(templates, start=1)]
    _require_fit(model, tokenizer, picked, others, templates, max_new_tokens, labels)
    bar = tqdm(total=len(picked) * (1 + len(templates)), desc="teacher check", unit="answer", disable=not progress)
    done = 0

    def advance(answers: int) -> None:
        nonlocal done
        done += answers
        bar.update(answers)
        if on_progress is not None:
            on_progress(done, len(picked) * (1 + len(templates)))

    with eval_mode(model):
        student_prompts = [student_prompt(tokenizer, ex) for ex in picked]
        student_lp = mean_logprobs(model, tokenizer, student_prompts, demos, batch_size=batch_size)
        student_answers = _answers(model, tokenizer, student_prompts, max_new_tokens, batch_size, advance)
        results = []
        for position, template in enumerate(templates, start=1):
            prompts = [teacher_prompt(tokenizer, ex, [ex.demonstration], template) for ex in picked]
            teacher_lp = mean_logprobs(model, tokenizer, prompts, demos, batch_size=batch_size)
            control_lp = [None] * len(picked)
            if others is not None:
                control_lp = mean_logprobs(model, tokenizer, [teacher_prompt(tokenizer, ex, [other], template)
                                                              for ex, other in zip(picked, others)],
                                           demos, batch_size=batch_size)
            answers = _answers(model, tokenizer, prompts, max_new_tokens, batch_size, advance)
            spans = [echo_span(a, template) for a in answers]
            rows = [{"source": ex.source, "prompt": ex.prompt, "student_logprob": s, "teacher_logprob": t,
                     "control_logprob": c, "student_answer": sa, "teacher_answer": a,
                     "student_similarity": similarity(sa, ex.demonstration),
                     "teacher_similarity": similarity(a, ex.demonstration),
                     "echo": span is not None, "copy": copies(a, ex.demonstration),
                     "student_correct": None if score is None else bool(score(sa, ex)),
                     "teacher_correct": None if score is None else bool(score(a, ex))}
                    for ex, s, t, c, sa, a, span in zip(picked, student_lp, teacher_lp, control_lp, student_answers,
                                                        answers, spans)]
            # A skip_first that covers the echo: the answer's tokens up to the end of its longest echo.
            echo_tokens = max((len(tokenizer(a[:span[1]], add_special_tokens=False)["input_ids"])
                               for a, span in zip(answers, spans) if span), default=0)
            result = _figures(labels[position - 1], rows, echo_tokens)
            result.verdict, result.advice = judge(result, skip_first)
            results.append(result)
    bar.close()
    best = max(results, key=lambda r: (_RANK[r.verdict], r.quality()[2] or 0.0, r.gain))
    advice = list(best.advice)
    if len(results) > 1:
        advice.insert(0, f"Template '{best.template}' teaches best on this sample"
                         + (": train with it." if best.template in TEMPLATES else "."))
    settings = advised_settings(best, skip_first, compared=len(results) > 1)
    if len(results) > 1 and best.template in TEMPLATES:
        settings = {"template": best.template, **settings}
    return TeacherCheck(records=len(picked), max_new_tokens=max_new_tokens,
                        scorer=scorer if isinstance(scorer, str) or scorer is None else "custom",
                        results=results, best=best.template, verdict=best.verdict, advice=advice,
                        seconds=round(time.perf_counter() - start, 2), settings=settings)


def quick_check(trainer, progress: bool = True, templates: Sequence[str] = (),
                on_progress: Progress | None = None) -> TeacherCheck | None:
    """The short check run before SDFT training (CLI and app): 8 records, the run's template, and also
    `templates` to compare it with (the app passes every named template, so its advice can name the best).

    Runs on the trainer's fresh adapter (a no-op, so this is the base model as teacher)
    and saves teacher_check.json in the run directory, if there is one. A sampled record whose teacher
    prompt and demonstration together overflow the context (training needs room for max_new_tokens only)
    skips the check, with a warning: it advises, and must not stop a run that can train.
    """
    config = trainer.config
    own = config.teacher.template
    own = own if template_label(own) == "custom" else template_label(own)  # a named template's text: its name
    compared = list(dict.fromkeys([*templates, own]))
    try:
        check = check_teacher(trainer.model, trainer.tokenizer, trainer.examples, templates=compared,
                              n=8, max_new_tokens=min(32, config.rollout.max_new_tokens), seed=config.train.seed,
                              skip_first=config.loss.skip_first, progress=progress, on_progress=on_progress)
    except TooLong as err:
        warnings.warn(f"the teacher check was skipped: {err}")
        return None
    if trainer.out_dir is not None:
        check.save(trainer.out_dir / "teacher_check.json")
    return check
