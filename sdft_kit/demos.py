"""Step 1, demo selection: which demonstrations the teacher sees, and the two prompts.

The student sees the query alone; the teacher sees the query with demonstrations
framed by a template (default: the paper's wording) in the same user turn.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

from transformers import PreTrainedTokenizerBase

from .config import PAPER_TEMPLATE, PLAIN_TEMPLATE, SYSTEM_TEMPLATE, TEMPLATES  # noqa: F401 (re-exported)
from .data import DataError, Example
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


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict] | tuple[dict, ...]) -> str:
    """Chat-template text of a prompt, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def student_prompt(tokenizer: PreTrainedTokenizerBase, example: Example) -> str:
    return render(tokenizer, example.messages)


def teacher_prompt(
    tokenizer: PreTrainedTokenizerBase, example: Example, demonstrations: list[str], template: str = PAPER_TEMPLATE
) -> str:
    return render(tokenizer, teacher_messages(example, demonstrations, template))


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


def check_prompt_lengths(tokenizer: PreTrainedTokenizerBase, examples: list[Example], context: int | None, *,
                         template: str, answer_tokens: int | None) -> None:
    """Raise DataError naming the first record whose prompt, with room for the answer, exceeds `context` tokens.

    Checked before training (tokenizing is cheap), so an oversized record is a clear error instead of a
    failed allocation. The teacher prompt is checked with the record's own demonstration; `answer_tokens`
    is the room kept for the answer (max_new_tokens), or None for SFT, where the answer is the demonstration.
    """
    if context is None:
        return
    if answer_tokens is None:
        prompts = {"prompt with its demonstration": [student_prompt(tokenizer, ex) + ex.demonstration
                                                     for ex in examples]}
    else:
        prompts = {"prompt": [student_prompt(tokenizer, ex) for ex in examples],
                   "teacher prompt": [teacher_prompt(tokenizer, ex, [ex.demonstration], template) for ex in examples]}
    room = answer_tokens or 0
    for what, texts in prompts.items():
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        for ex, length in zip(examples, lengths):
            if length + room > context:
                answer = f" plus {room} for the answer (max_new_tokens)" if room else ""
                raise DataError(f"{ex.source}: the {what} is {length} tokens{answer}, more than the model's context "
                                f"of {context} tokens. Shorten or remove this record"
                                + (", or lower --max-new-tokens" if room and length < context else ""))
