"""The world judge on a diffusion model's own images: its readings against the prompts, per attribute value.

The judge is trained and self-tested on renders only; a model's images fail in other ways (no lit windows
in a city, washed-out colors, merged shapes). This samples ``--per-prompt`` images of every seen
combination prompt of a seeded subset (every combination names count, color, shape and background), reads
them with the judge, and prints for each attribute the share of images whose reading differs from the
prompt, per asked value, with the commonest confusions. A disagreement is either the model's error or the
judge's: it saves a grid of the disagreements of each attribute value (``OUT/<attribute>_<value>.png``,
prompt values in the file ``OUT/disagreements.json``) so a person can tell which, as docs/world.md records.

    python -m benchmarks.judge_on_generated OUT [--model PIPELINE] [--prompts 300] [--per-prompt 4]
        [--images NPZ] [--judge JUDGE]

The sampled images are kept in ``OUT/images.npz`` (with their prompts), so another judge can read the
same images again: ``--images OUT/images.npz --judge OTHER``. ``--images`` also reads the images of
``benchmarks.count_probes`` (its base images, for example) instead of sampling.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
from pathlib import Path

import numpy as np

from t2ialign.config import GenerateConfig
from t2ialign.core.seeds import stable_seed
from t2ialign.generate.images import sample_images
from t2ialign.world import vocab
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import grid


def confusions(specs, verdicts) -> dict:
    """{attribute: {asked value: {"n", "wrong", "read_as": {value: n}}}} over the attributes prompts name."""
    out: dict = {}
    for spec, v in zip(specs, verdicts, strict=True):
        for kind, asked in spec.constrained().items():
            cell = out.setdefault(kind, {}).setdefault(str(asked), {"n": 0, "wrong": 0, "read_as": {}})
            cell["n"] += 1
            read = v.reading[kind][0]
            if read != asked:
                cell["wrong"] += 1
                cell["read_as"][str(read)] = cell["read_as"].get(str(read), 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default=None, help="a pipeline folder; default: the shipped world model")
    ap.add_argument("--judge", default=None, help="a judge folder; default: the shipped judge")
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument(
        "--images", type=Path, help="an OUT/images.npz of an earlier run, or of benchmarks.count_probes"
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.images:
        data = np.load(args.images)
        images = data["images"]
        if "texts" in data:  # this benchmark's own images.npz
            by_text = {p.text: p for p in build_prompt_set()}
            prompts, per = (
                [by_text[t] for t in data["texts"][:: int(data["per_prompt"])]],
                int(data["per_prompt"]),
            )
        else:
            from benchmarks.count_probes import eval_prompts

            per = len(images) // args.prompts
            prompts = eval_prompts(args.prompts)
    else:
        from t2ialign.models.load import load_pipeline

        rows = [p for p in build_prompt_set() if p.split == "seen" and p.category == "combination"]
        random.Random("judge-on-generated").shuffle(rows)
        prompts, per = rows[: args.prompts], args.per_prompt
        pipe, _, _ = load_pipeline(args.model)
        pipe.set_progress_bar_config(disable=True)
        texts = [p.text for p in prompts for _ in range(per)]
        seeds = [stable_seed("judge-on-generated", t, k % per) % 2**31 for k, t in enumerate(texts)]
        images = []
        for i in range(0, len(texts), 128):
            images += sample_images(pipe, texts[i : i + 128], seeds[i : i + 128], GenerateConfig())
        images = np.stack(images)
        np.savez_compressed(args.out / "images.npz", images=images, texts=np.array(texts), per_prompt=per)
    specs = [p.spec for p in prompts for _ in range(per)]
    verdicts = Judge.load(args.judge).judge(list(images), specs)
    table = confusions(specs, verdicts)
    saved = {}
    for kind in vocab.ATTRIBUTES:
        cells = table.get(kind, {})
        n, wrong = sum(c["n"] for c in cells.values()), sum(c["wrong"] for c in cells.values())
        print(f"{kind}: read differently from the prompt on {wrong} of {n} images")
        for value, c in sorted(cells.items(), key=lambda kv: -kv[1]["wrong"]):
            if not c["wrong"]:
                continue
            top = ", ".join(f"{k} {m}" for k, m in collections.Counter(c["read_as"]).most_common(3))
            print(f"  {value:>8s}: {c['wrong']:3d} of {c['n']:4d} ({c['wrong'] / c['n']:.0%}) read as {top}")
            idx = [
                i
                for i, (s, v) in enumerate(zip(specs, verdicts, strict=True))
                if str(getattr(s, kind)) == value and v.reading[kind][0] != getattr(s, kind)
            ][:32]
            name = f"{kind}_{value}.png"
            grid([images[i] for i in idx], cols=8).save(args.out / name)
            saved[name] = [[specs[i].text(), str(verdicts[i].reading[kind][0])] for i in idx]
    (args.out / "confusions.json").write_text(json.dumps(table, indent=1) + "\n")
    (args.out / "disagreements.json").write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
