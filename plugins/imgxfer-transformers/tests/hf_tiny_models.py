"""Tiny random-weight transformers models built from small configs and saved with
``save_pretrained`` (as transformers' own tests build them): BLIP and GIT captioners and
CLIP, each with an image processor and a tokenizer made from a vocabulary written here,
so the hub is never contacted."""

from __future__ import annotations

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
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

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


def save_tiny_clip(folder: Path, seed: int = 0, processor: bool = True) -> Path:
    """CLIP (CLIPModel, 16-d embeddings, 32-px images) with its image processor and a
    word-piece tokenizer. (A byte-level CLIPTokenizer built offline from a vocabulary
    without merges maps every word to one unknown token in transformers 5, so all class
    prompts would read alike; CLIP's text tower takes any token ids.)"""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={**_TEXT, "vocab_size": len(WORDS), "max_position_embeddings": 64,
                     "bos_token_id": WORDS.index("[CLS]"), "eos_token_id": WORDS.index("[SEP]"),
                     "pad_token_id": 0},
        vision_config=_VISION, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    if processor:
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                           image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]
                           ).save_pretrained(folder)
        _bert_tokenizer(folder.parent / "clip-vocab", model_max_length=64).save_pretrained(folder)
    return folder
