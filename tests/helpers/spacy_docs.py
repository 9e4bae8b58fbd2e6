"""Real spaCy `Doc`s with hand-written parses, as en_core_web_sm parses these sentences: the English pipeline is not
on PyPI, so the tests of the text filter and the statistics parse with these (tests/test_engine_*.py)."""

from __future__ import annotations

import spacy
from spacy.tokens import Doc

VOCAB = spacy.blank("en").vocab


def parsed(*tokens: tuple[str, str, str, str, int]) -> Doc:
    """A parsed Doc from (word, POS, tag, dependency label, head index) per token; no space before a
    punctuation mark."""
    return Doc(
        VOCAB,
        words=[t[0] for t in tokens],
        spaces=[i + 1 < len(tokens) and tokens[i + 1][1] != "PUNCT" for i in range(len(tokens))],
        pos=[t[1] for t in tokens],
        tags=[t[2] for t in tokens],
        deps=[t[3] for t in tokens],
        heads=[t[4] for t in tokens],
    )


def table_with(*things: str) -> Doc:
    """'A table with a cup, a plate, ... and a candle.': the first thing is the pobj of "with", each later
    one a conj of the thing before (spaCy chains coordinated nouns), its comma hanging off the thing before."""
    tokens = [
        ("A", "DET", "DT", "det", 1),
        ("table", "NOUN", "NN", "ROOT", 1),
        ("with", "ADP", "IN", "prep", 1),
    ]
    previous = None
    for n, thing in enumerate(things):
        if n == len(things) - 1:
            tokens.append(("and", "CCONJ", "CC", "cc", previous))
        elif previous is not None:
            tokens.append((",", "PUNCT", ",", "punct", previous))
        noun = len(tokens) + 1
        tokens.append(("a", "DET", "DT", "det", noun))
        tokens.append(
            (thing, "NOUN", "NN", "pobj" if previous is None else "conj", 2 if previous is None else previous)
        )
        previous = noun
    tokens.append((".", "PUNCT", ".", "punct", 1))
    return parsed(*tokens)


SENTENCES = {
    doc.text: doc
    for doc in [
        parsed(
            ("A", "DET", "DT", "det", 1), ("dog", "NOUN", "NN", "ROOT", 1), (".", "PUNCT", ".", "punct", 1)
        ),
        parsed(
            ("A", "DET", "DT", "det", 2),
            ("brown", "ADJ", "JJ", "amod", 2),
            ("dog", "NOUN", "NN", "nsubj", 3),
            ("runs", "VERB", "VBZ", "ROOT", 3),
            ("on", "ADP", "IN", "prep", 3),
            ("the", "DET", "DT", "det", 6),
            ("grass", "NOUN", "NN", "pobj", 4),
            (".", "PUNCT", ".", "punct", 3),
        ),
        parsed(
            ("It", "PRON", "PRP", "nsubj", 2),
            ("is", "AUX", "VBZ", "aux", 2),
            ("sitting", "VERB", "VBG", "ROOT", 2),
            (".", "PUNCT", ".", "punct", 2),
        ),
        parsed(
            ("A", "DET", "DT", "det", 1),
            ("man", "NOUN", "NN", "ROOT", 1),
            ("riding", "VERB", "VBG", "acl", 1),
            ("a", "DET", "DT", "det", 4),
            ("horse", "NOUN", "NN", "dobj", 2),
            (".", "PUNCT", ".", "punct", 1),
        ),
        parsed(
            ("Two", "NUM", "CD", "nummod", 1),
            ("people", "NOUN", "NNS", "nsubj", 3),
            ("are", "AUX", "VBP", "aux", 3),
            ("playing", "VERB", "VBG", "ROOT", 3),
            ("tennis", "NOUN", "NN", "dobj", 3),
            ("on", "ADP", "IN", "prep", 3),
            ("a", "DET", "DT", "det", 7),
            ("court", "NOUN", "NN", "pobj", 5),
            (".", "PUNCT", ".", "punct", 3),
        ),
        parsed(
            ("A", "DET", "DT", "det", 2),
            ("red", "ADJ", "JJ", "amod", 2),
            ("car", "NOUN", "NN", "ROOT", 2),
            ("and", "CCONJ", "CC", "cc", 2),
            ("a", "DET", "DT", "det", 6),
            ("white", "ADJ", "JJ", "amod", 6),
            ("truck", "NOUN", "NN", "conj", 2),
            (".", "PUNCT", ".", "punct", 2),
        ),
        parsed(
            ("The", "DET", "DT", "det", 1),
            ("car", "NOUN", "NN", "nsubj", 2),
            ("is", "AUX", "VBZ", "ROOT", 2),
            ("red", "ADJ", "JJ", "acomp", 2),
            (".", "PUNCT", ".", "punct", 2),
        ),
        parsed(
            ("The", "DET", "DT", "det", 1),
            ("cat", "NOUN", "NN", "nsubj", 2),
            ("sleeps", "VERB", "VBZ", "ROOT", 2),
            (".", "PUNCT", ".", "punct", 2),
        ),
        parsed(
            ("They", "PRON", "PRP", "nsubj", 1),
            ("are", "AUX", "VBP", "ROOT", 1),
            ("here", "ADV", "RB", "advmod", 1),
            (".", "PUNCT", ".", "punct", 1),
        ),
        table_with(
            "cup", "plate", "fork", "knife", "spoon", "bowl", "glass", "bottle", "napkin", "vase", "candle"
        ),
    ]
}
CROWDED = (
    "A table with a cup, a plate, a fork, a knife, a spoon, a bowl, a glass, a bottle, a napkin, a vase"
    " and a candle."
)
