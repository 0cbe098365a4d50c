"""Carry an unfinished `t2ialign pretrain` from one sitting to the next.

A sitting's work folder (`work/`, git-ignored) does not survive it, and the pre-training of the world takes
longer than a sitting on 2 CPU cores. `save` copies the least that resumes it exactly into a folder that
is committed (default `carry/<name>`): the tokenizer, the config, the finished CLIP (and VAE, unless it
was adopted with `--vae-from`: that one comes back the same way), the newest checkpoint of each
unfinished stage and the EMA snapshots of the learning curve. `restore` puts them back; the same
`t2ialign pretrain` command then resumes where the last sitting stopped (the pool and the latents are
deterministic and are remade).

    python -m benchmarks.carry_pretrain save work/v5            # at the end of a sitting, then commit carry/
    python -m benchmarks.carry_pretrain restore work/v5         # at the start of the next one
    nohup .venv/bin/t2ialign pretrain --out work/v5 --vae-from src/t2ialign/world/weights/sd \\
        > work/v5/pretrain.log 2>&1 &

Checkpoints are safetensors with a manifest of sha256 sums (`core.checkpoint`); a carried one that is
incomplete or altered is refused on resume.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from t2ialign.core.checkpoint import is_complete, latest_checkpoint

STAGES = ("clip", "vae", "unet")
ADOPTED_KEPT = ("text_clip",)  # an adopted text encoder travels (its source may be replaced later)
SMALL = ("tokenizer", "pretrain_config.json")


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def _adopted(stage_dir: Path) -> bool:
    return "adopted_from" in json.loads((stage_dir / "DONE").read_text())


def save(run: Path, dest: Path) -> list[str]:
    """Copy what resumes ``run`` into ``dest`` (replacing what was there); returns what was copied."""
    if not (run / "pretrain_config.json").is_file():
        raise SystemExit(f"{run} is not a pretrain work folder (no pretrain_config.json)")
    if dest.exists():
        shutil.rmtree(dest)
    copied = [name for name in SMALL + ADOPTED_KEPT if (run / name).exists()]
    for stage in STAGES:
        if (run / stage / "DONE").is_file():
            if not _adopted(run / stage):  # an adopted VAE comes back with --vae-from
                copied.append(stage)
        elif (ckpt := latest_checkpoint(run / "checkpoints" / stage)) is not None:
            copied.append(f"checkpoints/{stage}/{ckpt.name}")
    snapshots = sorted((run / "snapshots").glob("step_*")) if (run / "snapshots").is_dir() else []
    copied += [f"snapshots/{s.name}" for s in snapshots if not s.name.endswith(".tmp")]
    for rel in copied:
        _copy(run / rel, dest / rel)
    return copied


def restore(dest: Path, run: Path) -> list[str]:
    """Put a carried folder back into ``run``; refuses a carried checkpoint that is not complete."""
    if not dest.is_dir():
        raise SystemExit(f"nothing carried in {dest}")
    for ckpt in dest.glob("checkpoints/*/checkpoint-*"):
        if not is_complete(ckpt):
            raise SystemExit(f"{ckpt} is incomplete")
    shutil.copytree(dest, run, dirs_exist_ok=True)
    return sorted(str(p.relative_to(dest)) for p in dest.iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("save", "restore"):
        sp = sub.add_parser(verb)
        sp.add_argument("run", help="the pretrain work folder, e.g. work/v5")
        sp.add_argument("--carry", help="the committed folder (default: carry/<name of run>)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    dest = Path(args.carry) if args.carry else Path("carry") / run.name
    done = save(run, dest) if args.verb == "save" else restore(dest, run)
    print("\n".join(done) or "nothing to carry", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
