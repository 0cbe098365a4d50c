"""The world UNet's learning curve: Table 1's alignment per category at every pre-training snapshot.

``t2ialign pretrain`` saves a complete pipeline of the EMA UNet every ``pretrain.unet.snapshot_steps`` steps
(``OUT/snapshots/step_NNNNNN``). This judges each one with ``evaluate_base`` (the same prompts and seeds
for every snapshot) and writes ``OUT/learning_curve.json`` and ``OUT/learning_curve.png``. Snapshots
already judged are not judged again, so it can run beside a pre-training as snapshots appear.

    python -m benchmarks.learning_curve OUT [--prompts-per-category 50] [--images-per-prompt 4]

The issue-14 criterion "the last fifth of the pre-training steps moves count alignment by less than 2
points" is measured as a paired difference (same prompts and seeds, 95% bootstrap interval over prompts)
between the last snapshot and the newest one at or before 80% of its steps: ``last_fifth`` in the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from t2ialign.config import GenerateConfig
from t2ialign.evaluate.base_model import evaluate_base
from t2ialign.evaluate.paired import paired_bootstrap
from t2ialign.label.oracle import judge_stored
from t2ialign.store import Store
from t2ialign.world.judge import Judge
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


def _judged_by_slot(store_dir: Path, judge: Judge) -> dict[tuple[str, int], dict]:
    """{(prompt, seed): judged row} of a snapshot's evaluation images."""
    with Store.open(store_dir) as store:
        images = store.list_images(role="eval")
        rows = judge_stored(store, images, judge)
    seeds = {r["id"]: r["seed"] for r in images}
    return {(j["prompt"], seeds[j["image_id"]]): j for j in rows}


def last_fifth(work: Path, steps: list[int]) -> dict | None:
    """Paired change of each category's alignment (and of the count read right) from the newest snapshot
    at or before 80% of the last one's steps to the last one, on the same prompts and seeds."""
    early = [s for s in steps if s <= 0.8 * steps[-1]]
    if not early:
        return None
    judge = Judge.load()
    a = _judged_by_slot(work / f"step_{early[-1]:06d}", judge)
    b = _judged_by_slot(work / f"step_{steps[-1]:06d}", judge)
    out = {"from_step": early[-1], "to_step": steps[-1]}
    readers = {
        "aligned": lambda j: j["verdict"] == "good",
        "count_read": lambda j: j["attribute_hits"]["count"],
    }
    for c in CATEGORIES:
        for key, get in readers.items():
            if key == "count_read" and c not in ("count", "combination"):
                continue
            prompts: dict[str, tuple[list, list]] = {}
            for slot in sorted(a.keys() & b.keys()):
                if a[slot]["category"] == c:
                    pa, pb = prompts.setdefault(slot[0], ([], []))
                    pa.append(float(get(a[slot])))
                    pb.append(float(get(b[slot])))
            out[f"{c}_{key}"] = paired_bootstrap(
                [v[0] for v in prompts.values()], [v[1] for v in prompts.values()]
            )
    return out


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
    fifth = last_fifth(args.out / "curve_runs", sorted(int(k) for k in curve))
    if fifth is not None:
        (args.out / "learning_curve_last_fifth.json").write_text(json.dumps(fifth, indent=1) + "\n")
        for key, stat in fifth.items():
            if isinstance(stat, dict) and stat["delta"] is not None:
                lo, hi = stat["ci95"]
                print(
                    f"last fifth ({fifth['from_step']} -> {fifth['to_step']}) {key}: "
                    f"{100 * stat['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] points"
                )


if __name__ == "__main__":
    main()
