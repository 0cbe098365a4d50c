"""Where a loop stands: RUN/loop/NAME/config.json (the config it was started with) and one state.json per
round, the stages it finished with what each made, each written atomically after its stage. A rerun of
the same command continues at the next unfinished stage; a different config is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

from t2ialign.config import LoopConfig, to_dict
from t2ialign.core.config import ConfigError, from_dict
from t2ialign.core.fsutil import atomic_write, loads_json_object

STAGES = ("generate", "label", "reward", "finetune", "evaluate")  # a round's stages, in order
# fields that say how to run, not what is computed: a rerun may change them ("rounds" extends a loop)
RESUMABLE_FIELDS = ("rounds", "poll_seconds", "timeout_seconds")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def loop_dir(run_dir: Path, name: str) -> Path:
    if not NAME.fullmatch(name):
        raise ValueError(
            f"loop name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return Path(run_dir) / "loop" / name


def round_dir(root: Path, k: int) -> Path:
    return root / f"round_{k}"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = v
    return out


def changed_fields(old: dict, new: dict) -> list[str]:
    """'field: old -> new' for each dotted field that differs, the resumable ones left out."""
    a, b = _flat(old), _flat(new)
    return [
        f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k) and k not in RESUMABLE_FIELDS
    ]


def _with_defaults(stored: dict) -> dict:
    """A stored loop config with the fields added to LoopConfig since it was written, at their defaults
    (a new field's default is the behaviour from before it existed); as stored if it no longer loads."""
    try:
        return to_dict(from_dict(LoopConfig, stored, "loop"))
    except ConfigError:  # a field since removed or renamed: compare it as it was written
        return stored


def check_config(root: Path, cfg: LoopConfig, base_revision: str) -> None:
    """Write root/config.json on the first run; on a rerun, refuse a config (or base model) that differs
    from the one the loop was started with, naming the changed fields. A field added to the config since
    (such as ``generate.compile``) counts as unchanged at its default."""
    path = root / "config.json"
    new = {"config": to_dict(cfg), "base_revision": base_revision}
    if path.is_file():
        old = loads_json_object(path.read_text(), str(path))
        diff = changed_fields(_with_defaults(old.get("config", {})), new["config"])
        if old.get("base_revision") != base_revision:  # the base pipeline's weights changed in place
            diff.append(f"the base model's revision: {old.get('base_revision')} -> {base_revision}")
        if diff:
            raise ValueError(
                f"loop {root.name!r} ({root}) was started with another config; changed: {'; '.join(diff)}. "
                f"Rerun with the config it was started with (only {', '.join(RESUMABLE_FIELDS)} may "
                "change), or give the new config another --name"
            )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(new, indent=1) + "\n").encode())


def read_state(rdir: Path) -> dict:
    """{"round": k, "stages": {stage: what it made}} of the stages finished so far."""
    path = rdir / "state.json"
    if not path.is_file():
        return {"round": int(rdir.name.split("_")[1]), "stages": {}}
    state = loads_json_object(path.read_text(), str(path))
    unknown = set(state.get("stages", {})) - set(STAGES)
    if unknown:
        raise ValueError(f"{path} names unknown stages {sorted(unknown)}: not a state file of this version")
    return state


def finish_stage(rdir: Path, state: dict, stage: str, info: dict) -> None:
    """Record ``stage`` as finished (atomically: a crash leaves the old state or the new one)."""
    state["stages"][stage] = info
    rdir.mkdir(parents=True, exist_ok=True)
    atomic_write(rdir / "state.json", (json.dumps(state, indent=1) + "\n").encode())


def is_done(state: dict) -> bool:
    return all(s in state["stages"] for s in STAGES)
