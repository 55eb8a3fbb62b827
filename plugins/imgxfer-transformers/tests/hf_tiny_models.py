"""Tiny random-weight transformers models built from small configs and saved with
``save_pretrained`` (as transformers' own tests build them): BLIP and GIT captioners and
CLIP, each with a processor whose tokenizer is made from a vocabulary written here, so
the hub is never contacted."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# A word-piece vocabulary: BERT's special tokens, BLIP's decoder token, letters, a few words.
WORDS = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
         + list("abcdefghijklmnopqrstuvwxyz")
         + ["a", "photo", "of", "digit", "seven", "one", "the", "bar", "column", "dot"])
_VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
           "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
_TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
         "num_attention_heads": 4}


def _bert_tokenizer(folder: Path, **kwargs):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), **kwargs)


def save_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """BLIP image captioning (BlipForConditionalGeneration) with a BlipProcessor."""
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    config = BlipConfig(
        text_config={**_TEXT, "vocab_size": len(WORDS), "max_position_embeddings": 64,
                     "bos_token_id": WORDS.index("[DEC]"), "pad_token_id": 0,
                     "sep_token_id": WORDS.index("[SEP]")},
        vision_config=_VISION, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=_bert_tokenizer(folder.parent / "bert-vocab", bos_token="[DEC]"))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_git(folder: Path, seed: int = 0) -> Path:
    """GIT (GitForCausalLM) with a GitProcessor."""
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    config = GitConfig(vision_config=_VISION, vocab_size=len(WORDS),
                       max_position_embeddings=64, bos_token_id=WORDS.index("[CLS]"),
                       eos_token_id=WORDS.index("[SEP]"), pad_token_id=0, **_TEXT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GitForCausalLM(config)
    processor = GitProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=_bert_tokenizer(folder.parent / "git-vocab"))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _clip_tokenizer(folder: Path):
    """A byte-level BPE without merges: every byte is a token, alone or ending a word."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) for c in chars})
    vocab.update({c + "</w>": len(vocab) for c in chars})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=77), len(vocab)


def save_tiny_clip(folder: Path, seed: int = 0, processor: bool = True) -> Path:
    """CLIP (CLIPModel, 16-d embeddings, 32-px images) with a CLIPProcessor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, vocab_size = _clip_tokenizer(folder.parent / "clip-vocab")
    config = CLIPConfig(
        text_config={**_TEXT, "vocab_size": vocab_size, "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config=_VISION, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    if processor:
        CLIPProcessor(image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
            image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]),
            tokenizer=tokenizer).save_pretrained(folder)
    return folder
