"""Class names as people write them: whole words, any case, and the digits 0-9 standing
for their number words ("3" and "three") when nothing matches as written. Used where a
user's text meets a run's classes: `imgxfer generate` prompts and labels, and the class
folders or CSV labels `imgxfer predict` scores against."""

from __future__ import annotations

import re
from collections.abc import Sequence

# Version-like numbers ("p=0.93", "1.2.3") stay one word, so their digits name no class.
_WORD = re.compile(r"\d+(?:\.\d+)+|\w+")
_NUMBERS = dict(zip("zero one two three four five six seven eight nine".split(),
                    "0123456789", strict=True))


def words(text: str, numerals: bool = False) -> list[str]:
    """The lower-case words of ``text``; with ``numerals``, number words as digits."""
    found = _WORD.findall(text.lower())
    return [_NUMBERS.get(w, w) for w in found] if numerals else found


def class_matches(name: str, class_names: Sequence[str]) -> list[int]:
    """The classes ``name`` may mean, from the first rule that finds any: the same name,
    else the same in any case, else the same words with digits for number words ("3"
    means "three", "T-shirt/top" means "t shirt top"). More than one: ambiguous."""
    for key in (lambda s: s, str.lower, lambda s: words(s, True) or None):
        wanted = key(name.strip())
        hits = [i for i, c in enumerate(class_names) if wanted is not None and key(c) == wanted]
        if hits:
            return hits
    return []


def prompt_classes(prompt: str, class_names: Sequence[str], numerals: bool = True
                   ) -> list[int]:
    """The classes whose names appear in ``prompt`` as whole words, any case. A name
    inside a longer matching one counts as the longer one: "ankle boot" names "ankle
    boot", not "boot". Only when no name appears as written, and ``numerals``, are the
    digits 0-9 and their number words taken as the same word ("a 3" names "three"): a
    number that is no class ("drawn with 2 strokes") then does not name one."""
    found = _matches(words(prompt), [words(name) for name in class_names])
    if not found and numerals:
        found = _matches(words(prompt, True), [words(name, True) for name in class_names])
    return found


def _matches(prompt_words: list[str], names: list[list[str]]) -> list[int]:
    found: list[tuple[int, int, int]] = []  # (class, start, end) of each match
    for index, name_words in enumerate(names):
        size = len(name_words)
        if not size:
            continue
        for start in range(len(prompt_words) - size + 1):
            if prompt_words[start:start + size] == name_words:
                found.append((index, start, start + size))
    found = [m for m in found if not any(o != m and o[1] <= m[1] and m[2] <= o[2]
                                         and o[2] - o[1] > m[2] - m[1] for o in found)]
    return sorted({m[0] for m in found})
