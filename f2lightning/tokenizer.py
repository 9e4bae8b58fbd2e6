"""Tokenizers: load any local Hugging Face tokenizer, or train a small byte-level BPE offline.

Florence-2 extends BART's byte-level BPE with 1000 location tokens `<loc_0>` … `<loc_999>` (paper §3.1) and
structural tokens for polygons. Task tokens such as `<OD>` never reach the tokenizer: like the released
processor, `f2lightning.tasks` turns them into natural-language prompts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from f2lightning.tasks.locations import LOCATION_TOKENS, STRUCTURE_TOKENS

BART_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in facebook/bart-base
IMAGE_TOKEN = "<image>"


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the location, structure and `<image>` tokens that are missing; returns the same tokenizer.

    Callers must resize the model's embeddings to `len(tokenizer)` afterwards (`Florence2.resize_token_embeddings`).
    """
    vocab = tokenizer.get_vocab()
    plain = [t for t in (*LOCATION_TOKENS, *STRUCTURE_TOKENS) if t not in vocab]
    if plain:
        tokenizer.add_tokens(plain)
    if IMAGE_TOKEN not in vocab:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
        )
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer saved in a local directory (e.g. `facebook/bart-base` or a Florence-2 checkpoint), prepared."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer directory not found")
    # `image_token` named: transformers' Florence2Processor reads `tokenizer.image_token` / `image_token_id`.
    return prepare_tokenizer(
        AutoTokenizer.from_pretrained(path, extra_special_tokens={"image_token": IMAGE_TOKEN})
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with BART's special tokens on `texts` (seconds for thousands of lines), prepared.

    This stands in for `facebook/bart-base` where nothing can be downloaded: tests and the CPU demo.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=BART_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # BART's framing of every sequence: `<s> text </s>`.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=1024,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    return prepare_tokenizer(tokenizer)
