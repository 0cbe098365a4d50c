"""A CLIP tokenizer built offline from the world's grammar.

transformers ships no CLIP vocabulary and nothing may be downloaded here, so the world's tokenizer is a
byte-level BPE trained (in milliseconds, with the ``tokenizers`` library) on every caption the grammar can
write, with CLIP's normalizer, split pattern, byte alphabet and ``</w>`` end-of-word suffix. It is a stock
``transformers.CLIPTokenizer``: ``save_pretrained`` / ``from_pretrained`` round-trip it, and words outside
the grammar fall back to bytes instead of failing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import CLIPTokenizer

from t2ialign.world import vocab
from t2ialign.world.dataset import CAPTION_TEMPLATES, caption_for
from t2ialign.world.prompts import PromptSpec

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Longest caption: "<bos> five purple triangles under the sea <eos>" and the like: 9 tokens. 16 leaves room.
MAX_LENGTH = 16


def grammar_corpus() -> list[str]:
    """Every caption the world's grammar writes (all templates over all shapes), lower-cased."""
    texts = set()
    for shape in vocab.SHAPES:
        for count in vocab.COUNT_WORDS:
            for color in vocab.COLORS:
                for bg in vocab.BACKGROUNDS:
                    scene = PromptSpec(shape, count, color, bg)
                    texts.update(caption_for(scene, t).lower() for t in CAPTION_TEMPLATES)
    texts.update(PromptSpec(s, color=c).text().lower() for s in vocab.SHAPES for c in vocab.COLORS)
    return sorted(texts)


def build_clip_tokenizer(corpus: list[str] | None = None, vocab_size: int = 512) -> CLIPTokenizer:
    """Train a CLIP-compatible byte-level BPE on the corpus and wrap it as a ``CLIPTokenizer``."""
    corpus = grammar_corpus() if corpus is None else corpus
    tok = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    with tempfile.TemporaryDirectory() as tmp:
        tok.model.save(tmp)
        vocab_map = json.loads((Path(tmp) / "vocab.json").read_text())
        merges = [
            tuple(line.split(" "))
            for line in (Path(tmp) / "merges.txt").read_text().splitlines()
            if line and not line.startswith("#")
        ]
    return CLIPTokenizer(vocab=canonical_ids(vocab_map, merges), merges=merges, model_max_length=MAX_LENGTH)


def canonical_ids(vocab_map: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token ids in an order of their own: the special tokens, the other base tokens sorted, then one per
    merge in merge order. The BPE trainer adds the end-of-word characters ("a</w>", ...) in hash order,
    which differs from one call to the next, while its merges are the same: so the same corpus gives the
    same tokenizer."""
    merged = ["".join(m) for m in merges]
    specials = [BOS, EOS]
    base = sorted(set(vocab_map) - set(merged) - set(specials))
    order = specials + base + list(dict.fromkeys(merged))
    if sorted(order) != sorted(vocab_map):
        raise ValueError("the BPE vocabulary is not its base tokens and merges")
    return {t: i for i, t in enumerate(order)}
