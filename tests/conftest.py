"""Shared fixtures: tiny models and tokenizers built offline in seconds."""

from __future__ import annotations

import os

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and spinning threads slow a busy machine down badly.
torch.set_num_threads(int(os.environ.get("F2L_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tokenizer():
    from f2lightning.tokenizer import train_tokenizer

    texts = [
        "What does the image describe? a red circle and a blue square.",
        "Locate the objects with category name in the image.",
        "Describe in detail what is shown in the image.",
        "What is the text in the image, with regions? hello world",
    ] * 20
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture
def tiny_config():
    from f2lightning.model import Florence2Config

    return Florence2Config.preset("tiny", image_size=64)
