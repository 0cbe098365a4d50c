"""What count does each model draw when asked one to five? Read from a RUN's stored evaluation images.

``t2ialign evaluate`` says whether a count prompt was drawn right; this says how it was drawn wrong. For
every model whose evaluation images RUN holds (every pipeline and revision, as evaluate stored them), the
world judge reads the count of each image of a prompt that names one, and the table gives, per asked
count, the mean count read (six or more read as 6) and the share read exactly right:

    python -m benchmarks.count_reads work/v4r.bound [--out FILE.json]

No image is generated: only the stored ones are judged again (seconds per model).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from t2ialign.store import Store
from t2ialign.world import vocab
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import PromptSpec, parse_prompt


def count_reads(run: Path, judge: Judge) -> dict[str, dict]:
    """{model: {asked count word: {"n", "mean_read", "exact"}}} over RUN's count-bearing eval images."""
    with Store.open(run) as store:
        groups: dict[str, list[tuple[Path, PromptSpec]]] = defaultdict(list)
        for row in store.list_images(role="eval"):
            try:
                spec = parse_prompt(row["prompt"])
            except ValueError:  # a free caption (an imported preference set): no world count to read
                continue
            if spec.count is not None:
                name = f"{row['model_id']}@{row['model_revision']}"
                groups[name].append((store.image_path(row["sha256"]), spec))
    out = {}
    for name, items in sorted(groups.items()):
        images = [np.asarray(Image.open(p).convert("RGB")) for p, _ in items]
        # the judge's reading of the count: 0 to 5, 6 = six or more
        verdicts = judge.judge(images, [spec for _, spec in items])
        counts = np.array([v.reading["count"][0] for v in verdicts], float)
        asked = np.array([spec.count for _, spec in items])
        out[name] = {
            vocab.COUNT_WORDS[k]: {
                "n": int((asked == k).sum()),
                "mean_read": round(float(counts[asked == k].mean()), 2),
                "exact": round(float((counts[asked == k] == k).mean()), 3),
            }
            for k in sorted(set(asked.tolist()))
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="also write the table as JSON")
    args = ap.parse_args(argv)
    if not (args.run / "t2ialign.db").is_file():
        ap.error(f"{args.run} holds no run store (t2ialign.db)")
    table = count_reads(args.run, Judge.load())
    if not table:
        ap.error(f"{args.run} holds no evaluation image of a count prompt: run t2ialign evaluate first")
    words = list(next(iter(table.values())))
    print("model".ljust(60) + "".join(f"{w:>14}" for w in words) + "   (mean read / exact)")
    for name, cells in table.items():
        row = "".join(f"{cells[w]['mean_read']:>7.2f} /{100 * cells[w]['exact']:>4.0f}%" for w in words)
        print(name[-60:].ljust(60) + row)
    if args.out:
        args.out.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
