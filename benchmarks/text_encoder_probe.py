"""How far apart a pipeline's text encoder puts prompts that differ in one word: count words vs colors.

The UNet reads the text encoder's token states by cross-attention, and fine-tuning trains the UNet only,
so prompts the frozen encoder barely tells apart ("Two red circles" / "Three red circles") cannot be drawn
apart without moving the UNet far. For each pipeline this prints the mean pairwise distance between the
token states (first 6 positions) of five prompts differing only in their count word, and of five
differing only in their color, each divided by the mean norm of those states.

    python -m benchmarks.text_encoder_probe PIPELINE [PIPELINE ...]
"""

from __future__ import annotations

import argparse

import torch

COUNT = ["One red circle", "Two red circles", "Three red circles", "Four red circles", "Five red circles"]
COLOR = ["Two red circles", "Two blue circles", "Two green circles", "Two yellow circles", "Two pink circles"]
POSITIONS = 6  # start token and the prompt's words; the rest is padding


def separation(tokenizer, text_encoder, prompts: list[str]) -> float:
    """Mean pairwise distance of the prompts' token states over their mean norm."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        h = text_encoder(**ids).last_hidden_state[:, :POSITIONS].flatten(1)
    dist = torch.cdist(h, h)
    off = dist[~torch.eye(len(prompts), dtype=torch.bool)].mean()
    return float(off / h.norm(dim=1).mean())


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer, CLIPTextModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipelines", nargs="+")
    args = ap.parse_args(argv)
    for path in args.pipelines:
        tok = AutoTokenizer.from_pretrained(f"{path}/tokenizer")
        te = CLIPTextModel.from_pretrained(f"{path}/text_encoder").eval()
        print(
            f"{path}: count words {separation(tok, te, COUNT):.3f}, colors {separation(tok, te, COLOR):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
