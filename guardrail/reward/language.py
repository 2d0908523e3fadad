"""Which language a conversation is in, to route it to a reward model trained on it.

A script-based guess, with no model and no dependency: Japanese when the text has
kana, Korean for Hangul, Chinese for Han characters without kana, and so on;
Latin-script text is reported as ``en`` (reward models for other Latin-script
languages should be configured without a language restriction). Good enough to
send Japanese conversations to a Japanese reward model, which is what routing is for.
"""

from __future__ import annotations

import unicodedata

_SCRIPT_LANGUAGE = {
    "HIRAGANA": "ja",
    "KATAKANA": "ja",
    "HANGUL": "ko",
    "CJK": "zh",
    "CYRILLIC": "ru",
    "ARABIC": "ar",
    "DEVANAGARI": "hi",
    "THAI": "th",
    "HEBREW": "he",
    "GREEK": "el",
    "LATIN": "en",
}


def _script(char: str) -> str | None:
    try:
        name = unicodedata.name(char)
    except ValueError:
        return None
    first = name.split(" ", 1)[0]
    return first if first in _SCRIPT_LANGUAGE else None


def detect_language(text: str, *, sample: int = 2000) -> str:
    """A language code for ``text`` (``en`` when nothing else is evident).

    Kana anywhere means Japanese even when Han characters dominate, since
    Japanese mixes kanji with kana and Chinese does not use kana.
    """
    counts: dict[str, int] = {}
    for char in text[:sample]:
        if char.isalpha():
            script = _script(char)
            if script is not None:
                counts[script] = counts.get(script, 0) + 1
    if not counts:
        return "en"
    if counts.get("HIRAGANA", 0) + counts.get("KATAKANA", 0) > 0:
        return "ja"
    return _SCRIPT_LANGUAGE[max(counts, key=counts.__getitem__)]
