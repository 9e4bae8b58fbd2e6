"""What a text talks about, read off spaCy's dependency parse (paper §4.2.2): its objects, their attributes,
its actions, and how elaborate each object and action is.

The analysis takes a parsed `spacy.tokens.Doc`, not a string, so that any parser can feed it: the English
pipeline (`load_pipeline`), or a `Doc` built by hand with its words, heads and labels, which is what the tests
do because the pipeline cannot be installed from PyPI.

**Node degree** (the paper's complexity measure): a token's degree is its number of edges in the dependency
tree taken as an undirected graph, i.e. its children plus one for the link to its head (none for the
sentence root, which is its own head in spaCy). Punctuation children are not counted: a full stop says nothing
about the thing it follows. So in "A brown dog runs on the grass." *dog* has degree 3 (*A*, *brown*, head
*runs*), *runs* has 2 (*dog*, *on*; it is the root), *grass* has 2 (*the*, head *on*).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spacy.tokens import Doc, Token

DEFAULT_PIPELINE = "en_core_web_sm"
INSTALL_ENGINE = 'pip install "f2lightning[engine]"'
NOUN_TAGS = ("NOUN", "PROPN")


class EngineDependencyError(ImportError):
    """A package or model the data engine needs is not installed; the message says how to install it."""


@functools.cache
def load_pipeline(name: str = DEFAULT_PIPELINE) -> Callable[[str], Doc]:
    """The spaCy pipeline `name`, loaded once per process (loading takes seconds, a parse milliseconds).

    Raises `EngineDependencyError` naming the command that installs what is missing: spaCy itself comes with
    the `engine` extra; an English pipeline is not on PyPI and is installed with `python -m spacy download`.
    """
    try:
        import spacy
    except ImportError as error:
        raise EngineDependencyError(f"spaCy is not installed: {INSTALL_ENGINE}") from error
    try:
        return spacy.load(name)
    except OSError as error:  # spaCy's E050: no package or folder of that name
        raise EngineDependencyError(
            f"the spaCy pipeline {name!r} is not installed: python -m spacy download {name}"
        ) from error


def node_degree(token: Token) -> int:
    """Edges of `token` in the undirected dependency tree: non-punctuation children, plus one for its head
    unless it is a root (see the module docstring)."""
    children = sum(1 for child in token.children if child.pos_ != "PUNCT")
    return children + (0 if token.head.i == token.i else 1)


@dataclass(frozen=True)
class TextAnalysis:
    """Objects, attributes and actions of one text (lower-cased lemmas where the parser gives lemmas, else the
    words), each object's and action's node degree, and the part-of-speech counts the statistics report."""

    objects: tuple[str, ...]
    attributes: tuple[str, ...]
    actions: tuple[str, ...]
    object_degrees: tuple[int, ...]
    action_degrees: tuple[int, ...]
    nouns: int
    verbs: int
    adjectives: int

    @property
    def complexity(self) -> int:
        """The largest node degree of any object or action (0 for a text with neither)."""
        return max((*self.object_degrees, *self.action_degrees), default=0)


def analyze(doc: Doc) -> TextAnalysis:
    """Analyse one parsed text.

    - objects: the root of each noun chunk unless it is a pronoun ("it", "they" name nothing visible);
    - attributes: adjectives hanging off an object (*brown* in "a brown dog"), and predicate adjectives of a
      clause whose subject is an object (*red* in "the car is red");
    - actions: verbs (spaCy tags auxiliaries such as the *is* of "is sitting" `AUX`, so they are not actions).
    """
    if not doc.has_annotation("DEP"):
        raise ValueError(
            f"the text {doc.text!r} has no dependency parse: the analysis needs a pipeline with a parser "
            f"(e.g. {DEFAULT_PIPELINE})"
        )
    objects = [chunk.root for chunk in doc.noun_chunks if chunk.root.pos_ != "PRON"]
    attributes = []
    for noun in objects:
        attributes.extend(child for child in noun.children if child.pos_ == "ADJ")
        if noun.dep_ in ("nsubj", "nsubjpass"):
            attributes.extend(c for c in noun.head.children if c.dep_ == "acomp" and c.pos_ == "ADJ")
    actions = [token for token in doc if token.pos_ == "VERB"]
    return TextAnalysis(
        objects=tuple(_name(t) for t in objects),
        attributes=tuple(_name(t) for t in attributes),
        actions=tuple(_name(t) for t in actions),
        object_degrees=tuple(node_degree(t) for t in objects),
        action_degrees=tuple(node_degree(t) for t in actions),
        nouns=sum(1 for token in doc if token.pos_ in NOUN_TAGS),
        verbs=len(actions),
        adjectives=sum(1 for token in doc if token.pos_ == "ADJ"),
    )


def _name(token: Token) -> str:
    return (token.lemma_ or token.text).lower()
