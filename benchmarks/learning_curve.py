"""The world UNet's learning curve: Table 1's alignment per category at every pre-training snapshot.

``t2ialign pretrain`` saves a complete pipeline of the EMA UNet every ``pretrain.unet.snapshot_steps`` steps
(``OUT/snapshots/step_NNNNNN``). This judges each one with ``evaluate_base`` (the same prompts and seeds
for every snapshot) and writes ``OUT/learning_curve.json`` and ``OUT/learning_curve.png``. Snapshots
already judged are not judged again, so it can run beside a pre-training as snapshots appear.

    python -m benchmarks.learning_curve OUT [--prompts-per-category 50] [--images-per-prompt 4]

The issue-14 criterion "the last fifth of the pre-training steps moves count alignment by less than 2
points" is read off the two last snapshots 20% of the steps apart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from t2ialign.config import GenerateConfig
from t2ialign.evaluate.base_model import evaluate_base
from t2ialign.store import Store
from t2ialign.world.prompts import CATEGORIES


def judge_snapshot(snapshot: Path, work: Path, per_category: int, per_prompt: int) -> dict:
    cfg = GenerateConfig(model=str(snapshot), images_per_prompt=per_prompt, role="eval")
    with Store.open(work / snapshot.name) as store:
        report = evaluate_base(store, cfg, prompts_per_category=per_category, progress=False)
    return {
        c: {
            "aligned": report["by_category"][c]["alignment"],
            "ci95": report["by_category"][c]["ci95"],
            "n": report["by_category"][c]["n"],
            "attribute_accuracy": report["by_category"][c]["attribute_accuracy"],
        }
        for c in CATEGORIES
    }


def plot(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(int(k) for k in curve)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for c in CATEGORIES:
        ys = [curve[str(s)][c]["aligned"] for s in steps]
        lo = [curve[str(s)][c]["ci95"][0] for s in steps]
        hi = [curve[str(s)][c]["ci95"][1] for s in steps]
        ax.plot(steps, ys, marker="o", label=c)
        ax.fill_between(steps, lo, hi, alpha=0.15)
    ax.set_xlabel("UNet pre-training step")
    ax.set_ylabel("aligned (world judge)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a `t2ialign pretrain --out` folder")
    ap.add_argument("--prompts-per-category", type=int, default=50)
    ap.add_argument("--images-per-prompt", type=int, default=4)
    args = ap.parse_args()
    snapshots = sorted(p for p in (args.out / "snapshots").glob("step_*") if not p.name.endswith(".tmp"))
    if not snapshots:
        raise SystemExit(f"no snapshots in {args.out / 'snapshots'} yet")
    path = args.out / "learning_curve.json"
    curve = json.loads(path.read_text()) if path.is_file() else {}
    for snap in snapshots:
        step = str(int(snap.name.split("_")[1]))
        if step in curve:
            continue
        curve[step] = judge_snapshot(
            snap, args.out / "curve_runs", args.prompts_per_category, args.images_per_prompt
        )
        path.write_text(json.dumps(curve, indent=1, sort_keys=True) + "\n")
        cells = "  ".join(f"{c} {curve[step][c]['aligned']:.1%}" for c in CATEGORIES)
        print(f"step {step:>6s}: {cells}", flush=True)
    plot(curve, args.out / "learning_curve.png")


if __name__ == "__main__":
    main()
