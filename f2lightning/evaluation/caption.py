"""Captioning metrics following the COCO caption protocol (coco-caption / pycocoevalcap).

Both metrics tokenise predictions and references alike, with the tokenizer that `tokenizer=` names:

* ``"ptb"``: coco-caption's own, the Stanford PTBTokenizer jar that pycocoevalcap ships, run under Java, then
  coco-caption's punctuation list: the scores published on the benchmarks;
* ``"python"`` (default): :func:`coco_caption_tokenize`, a Java-free approximation that agrees on plain
  captions and differs on abbreviations, brackets, slashes and quotes; fast enough for validation during
  training;
* ``"auto"`` resolves to ``"ptb"`` where Java and pycocoevalcap are installed, else to ``"python"`` with a warning.
"""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import subprocess
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric

from f2lightning.evaluation._records import RecordMetric

# PTB splits these clitics off their word ("don't" -> "do n't", "dog's" -> "dog 's").
_CLITICS = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
# A word keeps inner hyphens / periods ("black-and-white", "3.5"); any other symbol is its own token.
_TOKENS = re.compile(r"n't|'\w+|\w+(?:[-.]\w+)*|[^\w\s]")
# Tokens coco-caption deletes after PTB tokenisation (its PUNCTUATIONS list, with PTB's bracket and quote
# symbols written as the raw characters they stand for).
_PUNCTUATION = frozenset(["'", '"', "`", "(", ")", "[", "]", "{", "}", ".", "?", "!", ",", ":", "-", ";"])

Ngram = tuple[str, ...]


def coco_caption_tokenize(text: str) -> str:
    """Lowercase, PTB-style tokenise and drop punctuation; returns the tokens joined by single spaces.

    An approximation of coco-caption's ``PTBTokenizer`` (which needs Java): ``"A dog's toy, isn't it?"`` ->
    ``"a dog 's toy is n't it"``.
    """
    text = _CLITICS.sub(r" \1", text.lower())
    return " ".join(tok for tok in _TOKENS.findall(text) if tok not in _PUNCTUATION)


# coco-caption removes these after PTB tokenisation. It compares them with its *lower-cased* output, so the
# bracket names never match and "(" survives as "-lrb-": kept as is, since the published scores include it.
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_PTB_JAR = "stanford-corenlp-3.4.1.jar"
# What the PTBTokenizer ends a line at: inside a text they would shift every later text by a line.
_PTB_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\u2028\u2029]")


def _ptb_jar() -> Path:
    """The jar, or an error saying what to install."""
    if shutil.which("java") is None:
        raise RuntimeError("caption tokenizer 'ptb' runs coco-caption's Java PTBTokenizer: install Java "
                           "(e.g. apt install default-jre-headless) or use tokenizer 'python'")  # fmt: skip
    try:  # pycocoevalcap is a namespace package: locate the module that sits beside the jar
        spec = importlib.util.find_spec("pycocoevalcap.tokenizer.ptbtokenizer")
    except ModuleNotFoundError:
        spec = None
    jar = Path(spec.origin).parent / _PTB_JAR if spec and spec.origin else None
    if jar is None or not jar.is_file():
        raise RuntimeError("caption tokenizer 'ptb' needs pycocoevalcap for coco-caption's PTBTokenizer jar "
                           "(pip install pycocoevalcap) or use tokenizer 'python'")  # fmt: skip
    return jar


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """coco-caption's tokenisation: Stanford PTBTokenizer (lower-cased, one line per text, one Java process for
    all texts), then its punctuation list; tokens joined by single spaces."""
    if not texts:
        return []
    command = ["java", "-cp", str(_ptb_jar()), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
               "-lowerCase"]  # fmt: skip
    lines = "\n".join(_PTB_LINE_BREAKS.sub(" ", text) for text in texts) + "\n"
    result = subprocess.run(command, input=lines.encode("utf-8"), capture_output=True, check=False)
    output = result.stdout.decode("utf-8").split("\n")
    if output and output[-1] == "":
        output.pop()
    if result.returncode != 0 or len(output) != len(texts):
        raise RuntimeError(f"PTBTokenizer returned {len(output)} lines for {len(texts)} texts (exit "
                           f"{result.returncode}): {result.stderr.decode(errors='replace')[-500:]}")  # fmt: skip
    return [" ".join(tok for tok in line.split() if tok not in PTB_PUNCTUATION) for line in output]


def resolve_caption_tokenizer(name: str) -> str:
    """``"ptb"`` or ``"python"``; ``"auto"`` picks ``"ptb"`` where it can run, and says so when it cannot."""
    if name not in ("auto", "ptb", "python"):
        raise ValueError(f"caption tokenizer must be auto, ptb or python, got {name!r}")
    if name == "python":
        return name
    try:
        _ptb_jar()
    except RuntimeError as error:
        if name == "ptb":
            raise
        warnings.warn(f"{error}; captions are tokenized by the Python approximation, so scores can differ "
                      "slightly from coco-caption's", stacklevel=2)  # fmt: skip
        return "python"
    return "ptb"


def _tokenizer(name: str) -> Callable[[Sequence[str]], list[str]]:
    return ptb_tokenize if name == "ptb" else (lambda texts: [coco_caption_tokenize(t) for t in texts])


def _tokenized(
    tokenize: Callable[[Sequence[str]], list[str]], preds: Sequence[str], targets: Sequence[Sequence[str]]
) -> list[tuple[str, list[str]]]:
    """`(prediction, references)` pairs tokenised in one call (one Java process for the PTB tokenizer)."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} reference lists")
    if any(not refs for refs in targets):
        raise ValueError("every prediction needs at least one reference caption")
    tokens = iter(tokenize([*preds, *(ref for refs in targets for ref in refs)]))
    hyps = [next(tokens) for _ in preds]
    return [(hyp, [next(tokens) for _ in refs]) for hyp, refs in zip(hyps, targets)]


def _ngrams(sentence: str, n: int) -> Counter[Ngram]:
    words = sentence.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CIDEr(RecordMetric):
    """CIDEr-D, exactly as coco-caption's ``Cider`` scorer (the number reported as "CIDEr" on COCO).

    TF-IDF weighted 1..4-gram cosine similarity with document frequencies taken over the references of the
    whole evaluated corpus (hence every sample is kept and gathered across ranks), hypothesis counts clipped
    by the reference counts, a Gaussian length penalty (``sigma=6``), averaged over n-gram orders and
    references, times 10; the corpus score is the mean over samples. ``compute`` returns
    ``{'cider': float}`` (NaN before any update). `tokenizer`: see the module docstring (``self.tokenizer``
    holds the resolved one).
    """

    def __init__(self, n: int = 4, sigma: float = 6.0, tokenizer: str = "python", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n
        self.sigma = sigma
        self.tokenizer = resolve_caption_tokenizer(tokenizer)

    def update(self, preds: Sequence[str], targets: Sequence[Sequence[str]]) -> None:
        """``preds[i]``: generated caption; ``targets[i]``: its (non-empty) list of reference captions."""
        for hyp, refs in _tokenized(_tokenizer(self.tokenizer), preds, targets):
            self._add_record([hyp, refs])

    def compute(self) -> dict[str, float]:
        records = self._records()
        if not records:
            return {"cider": math.nan}
        hyps = [_ngrams(pred, self.n) for pred, _ in records]
        refs = [[_ngrams(ref, self.n) for ref in sample_refs] for _, sample_refs in records]
        document_frequency: Counter[Ngram] = Counter()
        for sample_refs in refs:
            document_frequency.update(set().union(*sample_refs))
        log_num_docs = math.log(len(records))

        def tfidf(counts: Counter[Ngram]) -> tuple[list[dict[Ngram, float]], list[float], int]:
            vec: list[dict[Ngram, float]] = [{} for _ in range(self.n)]
            sq_norm = [0.0] * self.n
            for ngram, tf in counts.items():
                weight = tf * (log_num_docs - math.log(max(1.0, document_frequency[ngram])))
                vec[len(ngram) - 1][ngram] = weight
                sq_norm[len(ngram) - 1] += weight * weight
            # coco-caption measures a sentence's "length" as its number of bigrams; kept for identical scores.
            num_bigrams = sum(tf for ngram, tf in counts.items() if len(ngram) == 2)
            return vec, [math.sqrt(x) for x in sq_norm], num_bigrams

        scores = []
        for hyp, sample_refs in zip(hyps, refs):
            vec_h, norm_h, len_h = tfidf(hyp)
            total = 0.0
            for ref in sample_refs:
                vec_r, norm_r, len_r = tfidf(ref)
                penalty = math.exp(-((len_h - len_r) ** 2) / (2 * self.sigma**2))
                for k in range(self.n):
                    # Clipping the hypothesis weights by the reference's is what makes it CIDEr-D.
                    val = sum(
                        min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_h[k].items()
                    )
                    if norm_h[k] != 0 and norm_r[k] != 0:
                        val /= norm_h[k] * norm_r[k]
                    total += val * penalty
            scores.append(total / self.n / len(sample_refs) * 10.0)
        return {"cider": sum(scores) / len(scores)}


class BLEU(Metric):
    """Corpus BLEU-1..n exactly as coco-caption's ``Bleu(4)`` scorer (``option='closest'``).

    Clipped n-gram matches and candidate n-gram counts are summed over the corpus, the brevity penalty uses
    for each sample the reference length closest to the candidate length. Only sums are kept, so the DDP sync
    is a plain sum. ``compute`` returns ``{'bleu_1': ..., 'bleu_n': ...}`` as python floats. `tokenizer`: see
    the module docstring.
    """

    full_state_update = False

    def __init__(self, n: int = 4, tokenizer: str = "python", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n
        self.tokenizer = resolve_caption_tokenizer(tokenizer)
        self.add_state("correct", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("guess", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hyp_len", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("ref_len", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[Sequence[str]]) -> None:
        """``preds[i]``: generated caption; ``targets[i]``: its (non-empty) list of reference captions."""
        correct = [0] * self.n
        guess = [0] * self.n
        hyp_total = ref_total = 0
        for hyp, ref_tokens in _tokenized(_tokenizer(self.tokenizer), preds, targets):
            hyp_len = len(hyp.split())
            max_ref_counts: Counter[Ngram] = Counter()
            for ref in ref_tokens:
                max_ref_counts |= _ngrams(ref, self.n)  # | keeps the per-n-gram maximum
            for ngram, count in _ngrams(hyp, self.n).items():
                correct[len(ngram) - 1] += min(count, max_ref_counts[ngram])
            for k in range(self.n):
                guess[k] += max(0, hyp_len - k)
            hyp_total += hyp_len
            # Ties go to the shorter reference, as in coco-caption.
            ref_total += min((abs(len(ref.split()) - hyp_len), len(ref.split())) for ref in ref_tokens)[1]
        self.correct += torch.tensor(correct, device=self.device)
        self.guess += torch.tensor(guess, device=self.device)
        self.hyp_len += hyp_total
        self.ref_len += ref_total

    def compute(self) -> dict[str, float]:
        # coco-caption's smoothing constants: they only matter (and keep it finite) when counts are zero.
        tiny, small = 1e-15, 1e-9
        correct, guess = self.correct.tolist(), self.guess.tolist()
        ratio = (float(self.hyp_len) + tiny) / (float(self.ref_len) + small)
        brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
        scores, product = {}, 1.0
        for k in range(self.n):
            product *= (correct[k] + tiny) / (guess[k] + small)
            scores[f"bleu_{k + 1}"] = product ** (1.0 / (k + 1)) * brevity
        return scores
