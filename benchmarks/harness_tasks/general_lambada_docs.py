"""Passages for general_lambada.yaml: LAMBADA's shape (a passage whose last word is the target) cut from
general-purpose assistant replies, several per reply."""

from __future__ import annotations

MIN_WORDS = 30
MAX_WORDS = 120


def passages(reply: str) -> list[str]:
    """Consecutive, non-overlapping passages of the reply: each runs to the first sentence end at least
    MIN_WORDS words in that ends on a plain word (not a number or a code token), without the final
    punctuation; a stretch of MAX_WORDS words with no such end is skipped."""
    words, found, start = reply.split(), [], 0
    while start + MIN_WORDS < len(words):
        for i in range(start + MIN_WORDS, min(len(words), start + MAX_WORDS)):
            word = words[i]
            if word[-1] in ".!?" and word[:-1].isalpha() and len(word) > 3:
                found.append(" ".join(words[start:i] + [word[:-1]]))
                start = i + 1
                break
        else:
            start += MAX_WORDS
    return found


def process_docs(dataset):  # type: ignore[no-untyped-def]
    texts = [text for row in dataset for text in passages(row["chosen"]["value"])]
    return type(dataset).from_dict({"text": texts})
