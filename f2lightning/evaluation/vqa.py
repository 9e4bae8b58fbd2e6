"""VQA soft accuracy exactly as the official VQA evaluation (``vqaEval.py``) computes it.

The reference is ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of github.com/GT-Vision-Lab/VQA at commit
a013f0043c1e2cdc995922dfe257f7149aa9af06 ("Fixed processing answers bug", 2021-03-11), the current version. Per
question it strips the answers (``\\n``, ``\\t``, surrounding space), then:

- when the humans gave more than one distinct answer, the human answers *and* the prediction get the full
  normalisation (punctuation, lower case, number words to digits, articles dropped, contractions);
- when all humans agree, nothing is normalised: the stripped prediction must equal their answer exactly
  (``"Yes."`` against ten ``"yes"`` scores 0).

The version before that commit normalised the prediction always and the human answers only for punctuation, so
a correct ``"none"`` scored 0 (the prediction became ``"0"``); no benchmark server we evaluate for uses it, and
it is gone. ``docs/evaluation.md`` lists official-script cases with their scores (tested in tests/test_metrics.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

# Tables and regular expressions copied from the official vqaEval.py (quirks included: the period regex's
# "(?!<=\d)" is a lookahead, not the intended lookbehind, so "1.5" keeps its period only because of "(?!\d)").
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset(["a", "an", "the"])
_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
# The script is Python 2, where ``\d`` without re.UNICODE means ASCII digits only.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)", re.ASCII)


def _clean(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: drop or space out punctuation, strip non-decimal periods."""
    out = text
    for p in _PUNCT:
        if p + " " in text or " " + p in text or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official call passes re.UNICODE (== 32) positionally, i.e. as ``count``: at most 32 periods go.
    return _PERIOD_STRIP.sub("", out, count=re.UNICODE)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lowercase, number words to digits, drop articles, fix contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """Full official normalisation of an answer: ``'Two'`` -> ``'2'``, ``'dont'`` -> ``"don't"``, ``'a dog.'`` -> ``'dog'``."""
    return process_digit_article(process_punctuation(_clean(answer)))


def vqa_accuracy(prediction: str, answers: Sequence[str], normalize_references: bool = False) -> float:
    """Soft accuracy of one prediction against the human ``answers`` (10 for VQAv2 / TextVQA / VizWiz).

    ``min(1, #matching humans / 3)`` averaged over the leave-one-human-out subsets, e.g. 2 of 10 humans
    agreeing gives ``(8 * 2/3 + 2 * 1/3) / 10 = 0.6``. With ``normalize_references=False`` answers are compared
    as the current official ``vqaEval.py`` does (module docstring): fully normalised on both sides when the
    humans disagree, stripped only when they all agree. With ``True`` both sides are always fully normalised,
    as TextVQA's evaluation does (its configs and VizWiz's set it; their answers are raw).
    """
    if not answers:
        raise ValueError("a VQA question needs at least one human answer")
    pred = _clean(prediction)
    refs = [_clean(answer) for answer in answers]
    if normalize_references or len(set(refs)) > 1:
        pred = normalize_vqa_answer(pred)
        refs = [normalize_vqa_answer(answer) for answer in refs]
    matches = sum(ref == pred for ref in refs)
    # Leaving out human i leaves ``matches - (refs[i] == pred)`` matching humans among the others (the script
    # leaves out the one answer record; VQAv2's records differ by ``answer_id`` even when their texts agree).
    return sum(min(1.0, (matches - (ref == pred)) / 3) for ref in refs) / len(refs)


class VQAAccuracy(Metric):
    """VQAv2 soft accuracy (current official ``vqaEval.py``); the same formula serves TextVQA and VizWiz.

    See :func:`vqa_accuracy` for the formula and ``normalize_references``. ``compute`` returns
    ``{'accuracy': tensor}`` in [0, 1] (the official script reports it x100).
    """

    full_state_update = False

    def __init__(self, normalize_references: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.normalize_references = normalize_references
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[Sequence[str]]) -> None:
        """``preds[i]``: generated answer; ``targets[i]``: the human answers of that question."""
        self.score_sum += sum(
            vqa_accuracy(pred, answers, self.normalize_references)
            for pred, answers in zip(preds, targets, strict=True)
        )
        self.count += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"accuracy": self.score_sum / self.count}
