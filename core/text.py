"""Words of a text: the one tokenizer of the statistics on both sides of the loop; and how a
generated text ended.

Plain Python (no Django), so the engine and annotate's statistics can both use it.
"""

from __future__ import annotations

import re
import unicodedata

# A generated response's finish_reason when the token limit stopped it (as vLLM and OpenAI
# say); "stop" when the model ended its turn.
CUT_OFF = "length"

# Runs of word characters: letters, digits and the underscore, of any length.
_WORD = re.compile(r"\w+")
# Runs of two or more letters: no numbers, no one-letter words.
_LETTERS = re.compile(r"[^\W\d_]{2,}")


def words(text: str, *, letters_only: bool = False, fold: bool = False) -> list[str]:
    """The words of `text`, lower-cased, in order.

    letters_only: runs of two or more letters only (numbers and one-letter words dropped).
    fold: NFKC-normalised and case-folded ("ﬁ" → "fi", "ß" → "ss") instead of lower-cased,
    so that words written in different Unicode forms count as one.
    """
    text = unicodedata.normalize("NFKC", text).casefold() if fold else text.lower()
    return (_LETTERS if letters_only else _WORD).findall(text)
