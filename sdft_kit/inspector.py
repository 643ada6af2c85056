"""The prompt inspector: each record's student and teacher prompts as token streams, and what could go wrong.

Before a run, for every record (`inspect_prompts`), and shown for a few (`Inspection.text`,
`Inspection.html`, `sdft-kit inspect`):

    error    too long    a prompt plus the rollout budget (max_new_tokens) does not fit the context
                         (the model's, or rollout.max_context): it would be cut or run off the
                         positions the model was trained on
    error    template    the tokenizer has no chat template: the prompts cannot be rendered
    warning  thinking    the template opens a <think> block on one side only
    warning  system      template text (such as a default system prompt) that one side has and the other lacks
    warning  long demo   the demonstration is longer than the rollout budget: the teacher expects an
                         answer the student cannot finish

The trainer runs the same check before step 1: errors stop it, warnings are shown once.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from .config import Config
from .data import Example
from .demos import DemoSelector, render, student_messages, teacher_messages
from .methods import method_of

THINK = "<think>"
ROLE_WORDS = {"system", "user", "assistant", "model"}


@dataclass
class Flag:
    level: str  # 'error' or 'warning'
    kind: str  # 'too long', 'template', 'thinking', 'system', 'long demo'
    message: str


@dataclass
class PromptCheck:
    """One record: its two prompts as token ids (pieces decoded only when shown), their lengths, its flags."""

    source: str
    student_ids: list[int]
    teacher_ids: list[int]
    demonstration_tokens: int
    flags: list[Flag] = field(default_factory=list)
    tokenizer: PreTrainedTokenizerBase | None = field(default=None, repr=False)

    @property
    def student_tokens(self) -> list[str]:
        return self._pieces(self.student_ids)

    @property
    def teacher_tokens(self) -> list[str]:
        return self._pieces(self.teacher_ids)

    def _pieces(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t]) for t in ids]

    def shared(self) -> tuple[int, int]:
        """Tokens the two prompts share at the start and at the end."""
        s, t = self.student_ids, self.teacher_ids
        n = min(len(s), len(t))
        prefix = 0
        while prefix < n and s[prefix] == t[prefix]:
            prefix += 1
        suffix = 0
        while suffix < n - prefix and s[-1 - suffix] == t[-1 - suffix]:
            suffix += 1
        return prefix, suffix


@dataclass
class Inspection:
    records: list[PromptCheck]
    context: int | None  # the longest prompt + answer allowed, in tokens (None: the model does not say)
    max_new_tokens: int

    @property
    def errors(self) -> list[tuple[PromptCheck, Flag]]:
        return [(r, f) for r in self.records for f in r.flags if f.level == "error"]

    @property
    def warnings(self) -> list[tuple[PromptCheck, Flag]]:
        return [(r, f) for r in self.records for f in r.flags if f.level == "warning"]

    def summary(self) -> str:
        """One line per kind of problem: how many records, the first one named."""
        lines = []
        for level, found in (("error", self.errors), ("warning", self.warnings)):
            kinds: dict[str, list] = {}
            for record, flag in found:
                kinds.setdefault(flag.kind, []).append((record, flag))
            for kind, hits in kinds.items():
                record, flag = hits[0]
                others = len({id(r) for r, _ in hits}) - 1  # a record may be flagged on both sides
                more = f" (and {others} more record{'s' * (others > 1)})" if others else ""
                lines.append(f"{level}: {record.source}: {flag.message}{more}")
        fit = f" fit {self.context} tokens with the answer" if self.context else " checked (the model names no context length)"
        return "\n".join(lines) or f"prompts OK: {len(self.records)} records{fit}"

    def text(self, n: int = 3) -> str:
        """The first `n` records' prompts as token streams (whitespace made visible), then the summary."""
        out = []
        for record in self.records[:n]:
            prefix, suffix = record.shared()
            out.append(f"== {record.source}: student {len(record.student_ids)} tokens, teacher "
                       f"{len(record.teacher_ids)} tokens (shared: first {prefix}, last {suffix}); "
                       f"demonstration {record.demonstration_tokens} tokens")
            for side, tokens in (("student", record.student_tokens), ("teacher", record.teacher_tokens)):
                middle = tokens[prefix:len(tokens) - suffix]
                out.append(f"-- {side}: " + _stream(tokens[:prefix]) + " [[ " + _stream(middle) + " ]] "
                           + _stream(tokens[len(tokens) - suffix:]))
            out += [f"   {flag.level}: {flag.message}" for flag in record.flags]
        return "\n".join(out + ["", self.summary()])

    def html(self, n: int = 3) -> str:
        """The first `n` records side by side as token chips; tokens only one side has are highlighted."""
        cards = []
        for record in self.records[:n]:
            prefix, suffix = record.shared()
            columns = []
            for side, tokens in (("student", record.student_tokens), ("teacher", record.teacher_tokens)):
                chips = "".join(
                    f'<span style="border:1px solid #ddd;border-radius:3px;margin:1px;padding:0 2px;'
                    f'background:{"#fff3bf" if prefix <= i < len(tokens) - suffix else "#f7f7f7"}">'
                    f"{html.escape(_visible(token))}</span>" for i, token in enumerate(tokens))
                columns.append(f"<div><b>{side}</b> ({len(tokens)} tokens)<div style='font-family:monospace;"
                               f"font-size:12px;line-height:1.9'>{chips}</div></div>")
            flags = "".join(f"<li><b>{f.level}</b> ({f.kind}): {html.escape(f.message)}</li>" for f in record.flags)
            cards.append(f"<div style='margin-bottom:14px'><b>{html.escape(record.source)}</b>"
                         f"<div style='display:grid;grid-template-columns:1fr 1fr;gap:12px'>{''.join(columns)}</div>"
                         f"<ul>{flags}</ul></div>")
        return "".join(cards) + f"<pre>{html.escape(self.summary())}</pre>"


def _visible(token: str) -> str:
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def _stream(tokens: list[str]) -> str:
    return "·".join(_visible(t) for t in tokens)


def _skeleton(text: str, messages: list[dict]) -> str:
    """The rendered text with every message's content taken out: what the template itself writes."""
    for message in messages:
        text = text.replace(message["content"], "\x00", 1)
    return text


def _template_words(skeleton: str, tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """The template's own text pieces (between special tokens and message slots), role names left out."""
    for special in tokenizer.all_special_tokens:
        skeleton = skeleton.replace(special, "\x00")
    pieces = (line.strip() for piece in skeleton.split("\x00") for line in piece.split("\n"))
    return {piece for piece in pieces if piece and piece not in ROLE_WORDS}


def inspect_prompts(tokenizer: PreTrainedTokenizerBase, examples: list[Example], config: Config, *, context: int | None,
                    indices: list[int] | None = None) -> Inspection:
    """Check the records at `indices` (default: all) against `context` tokens (see the module doc)."""
    limit = config.rollout.max_context or context
    where = "rollout.max_context" if config.rollout.max_context else "the model's context"
    budget = config.rollout.max_new_tokens
    sft = method_of(config).batch == "demonstration"  # SFT trains on prompt + demonstration, no rollout
    selector = DemoSelector(examples, config.teacher.demo_selection, config.teacher.num_demos, config.train.seed)
    if not tokenizer.chat_template:
        flag = Flag("error", "template", "the tokenizer has no chat template: use an instruct/chat model, or set "
                                         "tokenizer.chat_template")
        return Inspection([PromptCheck(examples[0].source, [], [], 0, [flag])], limit, budget)
    records = []
    for i in range(len(examples)) if indices is None else indices:
        example = examples[i]
        sides = {"student": student_messages(example),
                 "teacher": teacher_messages(example, selector.demos_for(i), config.teacher.template)}
        texts = {side: render(tokenizer, messages) for side, messages in sides.items()}
        ids = {side: tokenizer(text, add_special_tokens=False)["input_ids"] for side, text in texts.items()}
        demo = len(tokenizer(example.demonstration, add_special_tokens=False)["input_ids"])
        check = PromptCheck(example.source or f"record {i}", ids["student"], ids["teacher"], demo,
                            tokenizer=tokenizer)
        # SFT trains on prompt + demonstration; SDFT's prompts need room for a max_new_tokens rollout.
        for side in ("student",) if sft else ("student", "teacher"):
            room, what = (demo, "its demonstration") if sft else (budget, "max_new_tokens for the answer")
            if limit and len(ids[side]) + room > limit:
                check.flags.append(Flag("error", "too long", f"the {side} prompt is {len(ids[side])} tokens plus "
                                        f"{room} for {what}, more than {where} of {limit} tokens. "
                                        "Shorten or remove this record" + ("" if sft else ", or lower max_new_tokens")))
        skeletons = {side: _skeleton(texts[side], sides[side]) for side in sides}
        if (THINK in skeletons["student"]) != (THINK in skeletons["teacher"]):
            opened = "student" if THINK in skeletons["student"] else "teacher"
            check.flags.append(Flag("warning", "thinking", f"the chat template opens a {THINK} block for the "
                                    f"{opened} only; set thinking on or off (--thinking) so both sides match"))
        words = {side: _template_words(skeletons[side], tokenizer) for side in sides}
        # The 'system' template replaces a chat template's default system prompt by design (demos.teacher_messages):
        # the student's default system text missing on the teacher's side is expected there.
        compared = (("teacher", "student"),) if config.teacher.template == "system" else \
            (("student", "teacher"), ("teacher", "student"))
        for side, other in compared:
            extra = sorted(words[side] - words[other])
            if extra:
                check.flags.append(Flag("warning", "system", f"the {side}'s prompt has template text the {other}'s "
                                        f"lacks: {extra[0][:80]!r} (e.g. a default system prompt one side drops; "
                                        "compare templates with sdft-kit check-teacher)"))
        if demo > budget:
            check.flags.append(Flag("warning", "long demo", f"the demonstration has {demo} tokens, more than "
                                    f"max_new_tokens {budget}: the student's answers stop before the teacher's "
                                    "would; raise max_new_tokens"))
        records.append(check)
    return Inspection(records, limit, budget)
