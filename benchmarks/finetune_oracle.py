"""What could fine-tuning teach with perfect feedback? Write world renders of a run's feedback prompts as a
D_pre folder.

Every render matches its prompt (the renderer draws what the caption says), so fine-tuning on them is the
best case for any feedback about those prompts: an upper bound on what reward-weighted fine-tuning of the
same length can gain. The folder is what ``t2ialign finetune --pretrain_data`` reads (images and
``captions.jsonl``); for example, with the labels as weights (only images the labelers called good):

    python -m benchmarks.finetune_oracle RUN OUT --per-prompt 4
    t2ialign finetune RUN --config configs/table2/full.toml --name oracle --weights labels --no-unlabeled \\
        --pretrain_data OUT --pretrain_images 100000 --max_train_steps 800
    t2ialign evaluate RUN --models base,finetuned:oracle,...

Render seeds start at 10,000, apart from the reference renders FD_CLIP compares with (seeds from 0 in
``evaluate``, from 500 in ``benchmarks.finetune_guidance``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from t2ialign.core.fsutil import atomic_write
from t2ialign.store import Store
from t2ialign.world.render import render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run with feedback (seen) prompts")
    parser.add_argument("out", help="folder to write (images and captions.jsonl)")
    parser.add_argument("--per-prompt", type=int, default=4, help="renders per prompt")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    if args.per_prompt < 1:
        parser.error("--per-prompt must be >= 1")
    with Store.open(args.run) as store:
        prompts = sorted(p["text"] for p in store.list_prompts(split="seen"))
    if not prompts:
        parser.error(f"{args.run} has no seen prompts")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, prompt in enumerate(tqdm(prompts, desc="render", unit="prompt")):
        for k in range(args.per_prompt):
            name = f"{i:05d}_{k}.png"
            Image.fromarray(render(prompt, seed=10_000 + k, size=args.size).image).save(out / name)
            rows.append({"file": name, "text": prompt})
    # written last and atomically: a folder whose captions.jsonl exists is complete
    atomic_write(out / "captions.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    print(f"{len(rows)} renders of {len(prompts)} prompts -> {out}")


if __name__ == "__main__":
    main()
