"""Small text helpers shared by demo selection, the teacher check, evaluation and the tasks."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_LETTER = re.compile(r"^\s*\(?([A-Za-z])\)?(?:[).:]|\s|$)")  # "B", "(b)", "B) Paris", "B. Paris"


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def words(text: str) -> list[re.Match]:
    """The words of a text, lowercased, with their character spans (`match[0]` is the word)."""
    return list(re.finditer(r"\w+", text.lower()))


def option_letter(text: str, letters: str = string.ascii_uppercase) -> str | None:
    """The option letter a text starts with ('b', '(B)', 'B) Paris' -> 'B'), if it is one of `letters`."""
    match = _LETTER.match(text)
    letter = match[1].upper() if match else None
    return letter if letter and letter in letters else None
