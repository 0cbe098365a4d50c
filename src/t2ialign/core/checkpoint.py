"""Atomic training checkpoints: safetensors tensors + JSON state, completed by a manifest written last.

A checkpoint is written into a temporary folder beside its final place, every file fsynced, the manifest
(file sizes and sha256) written last, then the folder is renamed into place (atomic on POSIX) and the
parent directory fsynced. Only then are old checkpoints deleted. ``latest_checkpoint`` never returns a
folder without a valid manifest, so a crash while writing leaves the previous checkpoint in charge.
Resume refuses a missing path or a config that differs from the checkpoint's: it never starts fresh.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from t2ialign.core.fingerprint import file_sha256
from t2ialign.core.fsutil import fsync_dir, fsync_file

MANIFEST = "manifest.json"
PREFIX = "checkpoint-"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt, or made with another config."""


def optimizer_to_tensors(opt: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict, dict]:
    """Split an optimizer's state_dict into safetensors-able tensors and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors, state = {}, {}
    for pid, pstate in sd["state"].items():
        state[str(pid)] = {}
        for k, v in pstate.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().clone().contiguous()
            else:
                state[str(pid)][k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": state}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "optimizer"
) -> None:
    state = {}
    for pid, rest in meta["state"].items():
        state[int(pid)] = dict(rest)
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    root: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int = 3
) -> Path:
    """Write ``root/checkpoint-{step}`` atomically; keep the newest ``keep`` complete checkpoints."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"refusing to checkpoint non-finite values in {name!r} at step {step}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1, sort_keys=True))
    files = {}
    for name in ("tensors.safetensors", "state.json"):
        fsync_file(tmp / name)
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    fsync_file(tmp / MANIFEST)
    fsync_dir(tmp)
    if final.exists():  # a complete checkpoint of the same step (a rerun): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def is_complete(path: Path) -> bool:
    """True when the manifest exists and every file it names has its recorded size."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        return all((path / n).stat().st_size == f["bytes"] for n, f in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_resume(root: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """``None`` -> no resume; ``"latest"`` -> newest complete one under root (None if there is none yet);
    a path -> that checkpoint, which must exist and be complete."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        return latest_checkpoint(root)
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"resume_from_checkpoint: no checkpoint at {path}")
    if not is_complete(path):
        raise CheckpointError(
            f"resume_from_checkpoint: {path} is incomplete (no valid manifest); refusing it"
        )
    return path


def with_defaults(saved: dict, defaults: dict) -> dict:
    """``saved`` with each setting it lacks taken from ``defaults`` (nested dicts merged alike): a
    checkpoint made before a setting existed ran as that setting's default does."""
    out = dict(saved)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = with_defaults(out[k], v)
    return out


def load_checkpoint(
    path: str | Path, expect_config: dict | None = None, verify: bool = True, defaults: dict | None = None
) -> tuple[dict, dict]:
    """(tensors, state) of a checkpoint. With ``expect_config``, refuses a checkpoint whose saved
    ``state["config"]`` differs (resuming with other settings would not equal an uninterrupted run).
    ``defaults``: every setting's default, for the settings added since the checkpoint was made (it lacks
    them): those match where ``expect_config`` holds their default, the value that run had."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"checkpoint {path} is missing or incomplete")
    if verify:
        manifest = json.loads((path / MANIFEST).read_text())
        for name, f in manifest["files"].items():
            if file_sha256(path / name) != f["sha256"]:
                raise CheckpointError(f"checkpoint {path}: {name} does not match its manifest (corrupt)")
    state = json.loads((path / "state.json").read_text())
    saved = state.get("config") or {}
    if defaults is not None:
        saved = with_defaults(saved, defaults)
    if expect_config is not None and saved != expect_config:
        diff = sorted(k for k in set(expect_config) | set(saved) if expect_config.get(k) != saved.get(k))
        raise CheckpointError(
            f"checkpoint {path} was made with another config (differs in: {', '.join(diff)})"
        )
    return load_file(str(path / "tensors.safetensors")), state
