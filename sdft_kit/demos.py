"""Step 1, demo selection: which demonstrations the teacher sees, and the two prompts.

The student sees the query alone; the teacher sees the query with demonstrations
framed by a template (default: the paper's wording) in the same user turn.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from pathlib import Path

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from .config import PAPER_TEMPLATE, PLAIN_TEMPLATE, SYSTEM_TEMPLATE, TEMPLATES, TeacherConfig  # noqa: F401
from .data import Example
from .models import with_thinking
from .text import words


def fill_template(template: str, prompt: str, demonstration: str) -> str:
    # Replace both slots in one pass, so braces or slot names inside the user's text
    # are never themselves substituted.
    return re.sub(r"\{(prompt|demonstration)\}", lambda m: prompt if m[1] == "prompt" else demonstration, template)


def teacher_messages(example: Example, demonstrations: list[str], template: str = PAPER_TEMPLATE) -> list[dict]:
    """The query's messages with the demonstrations added for the teacher.

    template: a name from TEMPLATES or a text with {prompt} and {demonstration}. A text
    rewrites the last user turn. "system" leaves every turn as it is and puts the
    demonstrations in a system message: appended to the conversation's own when it opens
    with one, else a new first message (which replaces a chat template's default system
    prompt, e.g. SmolLM2's): a leading system message is what chat templates support most widely.
    """
    joined = "\n\n".join(demonstrations)
    if template == "system":
        note = fill_template(SYSTEM_TEMPLATE, "", joined)
        first, *rest = example.messages
        if first["role"] == "system":
            return [{"role": "system", "content": first["content"] + "\n\n" + note}, *rest]
        return [{"role": "system", "content": note}, *example.messages]
    *history, last = example.messages
    text = fill_template(TEMPLATES.get(template, template), last["content"], joined)
    return [*history, {"role": "user", "content": text}]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict] | tuple[dict, ...],
           chat_template: str | None = None) -> str:
    """Chat-template text of a prompt, ending where the assistant's answer starts.

    chat_template: a template to use instead of the tokenizer's (the teacher's own, see
    `teacher_chat_template`). A template that refuses a system role (Gemma 1 and 2: "System role
    not supported") gets the system text at the start of the first user turn instead, as Gemma 3's
    own template does.
    """
    messages = list(messages)
    options = {"add_generation_prompt": True, "tokenize": False}
    if chat_template is not None:
        options["chat_template"] = chat_template
    try:
        return tokenizer.apply_chat_template(messages, **options)
    except TemplateError:
        if messages[0]["role"] != "system" or len(messages) < 2 or messages[1]["role"] != "user":
            raise
        system, user, *rest = messages
        folded = [{"role": "user", "content": system["content"] + "\n\n" + user["content"]}, *rest]
        return tokenizer.apply_chat_template(folded, **options)


def teacher_chat_template(tokenizer: PreTrainedTokenizerBase, config: TeacherConfig) -> str | None:
    """The chat template of the teacher's prompts: None when it is the student's (the tokenizer's own).

    config.teacher_chat_template: '' (the student's), a .jinja file or a template text; then
    config.teacher_thinking fixes its thinking switch for the teacher alone ('same': as the student's).
    """
    template = config.teacher_chat_template
    if not template and config.teacher_thinking == "same":
        return None
    if template and "{%" not in template and "{{" not in template:
        path = Path(template).expanduser()
        if not path.is_file():
            raise ValueError(f"teacher_chat_template: {template!r} is neither a file nor a chat template text (no "
                             "'{%' or '{{'); give the path of a .jinja file or the template itself")
        template = path.read_text(encoding="utf-8")
    template = template or tokenizer.chat_template or ""
    if config.teacher_thinking == "same":
        return template
    return with_thinking(template, config.teacher_thinking, field="teacher_thinking")


def student_messages(example: Example) -> list[dict]:
    """The query's messages as the student sees them: as they are."""
    return list(example.messages)


def student_prompt(tokenizer: PreTrainedTokenizerBase, example: Example) -> str:
    return render(tokenizer, student_messages(example))


def teacher_prompt(
    tokenizer: PreTrainedTokenizerBase, example: Example, demonstrations: list[str], template: str = PAPER_TEMPLATE,
    chat_template: str | None = None,
) -> str:
    """The teacher's prompt text: `teacher_messages` through the chat template (the teacher's own, if given)."""
    return render(tokenizer, teacher_messages(example, demonstrations, template), chat_template)


class DemoSelector:
    """Picks the demonstrations for each example's teacher prompt.

    own        the example's own demonstration (the paper's choice);
    retrieval  the k other examples whose queries are most similar (TF-IDF cosine);
    random     k other examples at random (seeded).
    """

    def __init__(self, examples: list[Example], strategy: str = "own", k: int = 1, seed: int = 0):
        if strategy != "own" and len(examples) < 2:
            raise ValueError(f"demo_selection={strategy!r} needs at least 2 examples to pick others from")
        self.examples, self.strategy, self.k = examples, strategy, min(k, max(1, len(examples) - 1))
        self.rng = random.Random(seed)
        if strategy == "retrieval":
            self._vectors = self._tfidf([ex.prompt for ex in examples])

    @staticmethod
    def _tfidf(texts: list[str]) -> list[dict[str, float]]:
        counts = [Counter(w[0] for w in words(t)) for t in texts]
        df = Counter(w for c in counts for w in c)
        vectors = []
        for c in counts:
            v = {w: n * math.log((1 + len(texts)) / (1 + df[w])) for w, n in c.items()}
            norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
            vectors.append({w: x / norm for w, x in v.items()})
        return vectors

    def indices_for(self, index: int) -> list[int]:
        if self.strategy == "own":
            return [index]
        others = [j for j in range(len(self.examples)) if j != index]
        if self.strategy == "random":
            return self.rng.sample(others, self.k)
        query = self._vectors[index]
        score = {j: sum(x * self._vectors[j].get(w, 0.0) for w, x in query.items()) for j in others}
        return sorted(others, key=lambda j: (-score[j], j))[: self.k]

    def demos_for(self, index: int) -> list[str]:
        return [self.examples[j].demonstration for j in self.indices_for(index)]
