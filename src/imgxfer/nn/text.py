"""Download-free text encoder for captions and prompts: hashed words and word pairs.

Generators need to condition on captions ("a handwritten digit seven, domain digits")
without a model hub. Each lowercase word and each pair of adjacent words is hashed into
one of a fixed number of buckets with ``zlib.crc32`` (the same bucket in every process and
on every machine, unlike Python's salted ``hash()``); an ``nn.EmbeddingBag`` averages the
bucket vectors and a small MLP maps the average to a layer-normalised text embedding. The
encoder has no pretrained weights: it is trained jointly with the model that uses it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

NUM_BUCKETS = 4096
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase words of ``text``, then every adjacent pair of them ("digit seven")."""
    words = _WORD.findall(text.lower())
    # Pairs tell "not seven" from "seven" and keep word order, which a bag of words loses.
    return words + [f"{a} {b}" for a, b in pairwise(words)]


def bucket(token: str, num_buckets: int = NUM_BUCKETS) -> int:
    """The bucket of ``token``: stable across processes, so checkpoints keep their meaning."""
    return zlib.crc32(token.encode("utf-8")) % num_buckets


def token_ids(texts: Sequence[str], num_buckets: int = NUM_BUCKETS) -> torch.Tensor:
    """Bucket ids of each text as an int64 ``[len(texts), L]`` tensor.

    Rows are padded with ``num_buckets``, the padding index of :class:`HashedTextEncoder`,
    which its mean leaves out; a text without words becomes a row of padding only.
    """
    rows = [[bucket(t, num_buckets) for t in tokenize(text)] for text in texts]
    length = max((len(r) for r in rows), default=0) or 1
    ids = torch.full((len(rows), length), num_buckets, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return ids


class HashedTextEncoder(nn.Module):
    """Texts -> ``[B, dim]`` embeddings: mean of hashed n-gram vectors, then a small MLP."""

    def __init__(self, dim: int = 32, *, num_buckets: int = NUM_BUCKETS) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.bag = nn.EmbeddingBag(num_buckets + 1, dim, mode="mean", padding_idx=num_buckets)
        # The LayerNorm puts the output on the scale of a class embedding: otherwise the
        # few words that tell two captions apart (the domain) start out as a faint signal
        # and take hundreds of steps to be heard.
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim),
                                 nn.LayerNorm(dim))

    def token_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Bucket ids for :meth:`forward`, on the CPU (move them with the batch)."""
        return token_ids(texts, self.num_buckets)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` from :meth:`token_ids` (``[B, L]``) -> ``[B, dim]``."""
        out: torch.Tensor = self.mlp(self.bag(ids))
        return out

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed raw texts on the encoder's device."""
        out: torch.Tensor = self(self.token_ids(texts).to(self.bag.weight.device))
        return out
