"""Write the world's D_pre with other caption rates as a folder that ``finetune --pretrain_data`` reads.

``finetune --pretrain_data world`` draws D_pre with the base's own web-like captions (its
``t2ialign.json``; for v4 to v6 the defaults, the count named in 10% of them and 80% of those right). A
world whose base lost its count mapping (v4r, docs/world.md) would relearn it from those captions,
whatever the feedback says; the bound's D_pre-alone control then gains as much as the feedback run.
This writes the same renders (``PretrainDataset``, same seed) with other rates, e.g. captions that
never state a count:

    python -m benchmarks.dpre_folder work/dpre_nocount --count-rate 0 --n 20000
    python -m benchmarks.perfect_feedback RUN --model PIPELINE --pretrain-data work/dpre_nocount ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from t2ialign.core.fsutil import atomic_write
from t2ialign.world.dataset import DEFAULT_CAPTION_RATES, DEFAULT_COUNT_ERROR_RATE, PretrainDataset
from t2ialign.world.render import LAYOUTS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write (PNG images and captions.jsonl)")
    ap.add_argument("--n", type=int, default=20_000, help="examples")
    ap.add_argument("--seed", type=int, default=0, help="D_pre's seed (finetune's default is 0)")
    ap.add_argument("--size", type=int, default=64)
    for name, rate in DEFAULT_CAPTION_RATES.items():
        ap.add_argument(f"--{name}-rate", type=float, default=rate, help=f"how often a caption names {name}")
    ap.add_argument("--count-error-rate", type=float, default=DEFAULT_COUNT_ERROR_RATE)
    ap.add_argument("--layout", choices=LAYOUTS, default="random", help="how the renders place their shapes")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be >= 1")
    rates = {name: getattr(args, f"{name}_rate") for name in DEFAULT_CAPTION_RATES}
    try:
        ds = PretrainDataset(args.n, args.seed, args.size, rates, args.count_error_rate, layout=args.layout)
    except ValueError as e:
        ap.error(str(e))
    if (args.out / "captions.jsonl").exists():
        ap.error(f"{args.out} already holds a D_pre folder; pass a new one")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(args.n), desc="render D_pre", unit="img"):
        item = ds[i]
        image = ((item["pixel_values"].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).byte().numpy()
        name = f"{i:06d}.png"
        Image.fromarray(image).save(args.out / name)
        rows.append({"file": name, "text": item["caption"]})
    meta = {"n": args.n, "seed": args.seed, "size": args.size, "caption_rates": rates}
    meta |= {"count_error_rate": args.count_error_rate, "layout": args.layout}
    (args.out / "dpre.json").write_text(json.dumps(meta, indent=1) + "\n")
    # written last and atomically: a folder whose captions.jsonl exists is complete
    atomic_write(args.out / "captions.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    print(f"{len(rows)} D_pre examples -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
