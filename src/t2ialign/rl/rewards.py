"""Where the policy's reward comes from (``rl.reward``):

- ``learned``: the reward model r_phi trained on the run's labels (``RewardModel.load``, RUN/reward or
  ``rl.reward_path``), the paper's reward; ``labels_used`` is its training set size (config.json n_train);
- ``judge``: the world judge's P(match), an oracle reward in the shapes world (no label used);
- ``python:module:function``: any importable callable ``reward(images, prompts) -> tensor (N,)``, images
  a list of (H, W, 3) uint8 arrays, prompts a list of N texts.

Each is a ``Reward``: call it on images and prompts, get a float32 tensor (N,), checked finite.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Reward:
    name: str  # the rl.reward setting that made it
    fn: Callable  # (images, prompts) -> (N,) scores
    labels_used: int | None  # labels behind the reward (None: unknown, a user callable)
    source: str | None = None  # the reward model's folder, when learned

    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        out = self.fn(images, prompts)
        out = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out, dtype=np.float32))
        out = out.detach().float().cpu()
        if out.shape != (len(images),):
            raise ValueError(
                f"reward {self.name!r} returned shape {tuple(out.shape)} for {len(images)} images: "
                "it must return one number per image, a tensor (N,)"
            )
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"reward {self.name!r} returned a non-finite value: {out.tolist()}")
        return out


def load_reward(spec: str, run_dir: Path, reward_path: str | None = None) -> Reward:
    """The reward named by ``spec`` (``rl.reward``); clear errors for what is missing."""
    if spec == "learned":
        return _learned(Path(reward_path) if reward_path else run_dir / "reward")
    if spec == "judge":
        from t2ialign.world.judge import Judge

        judge = Judge.load()
        return Reward("judge", lambda ims, ps: [v.p_match for v in judge.judge(ims, ps)], labels_used=0)
    if spec.startswith("python:"):
        return Reward(spec, _python_callable(spec), labels_used=None)
    raise ValueError(f"reward must be 'learned', 'judge' or 'python:module:function', got {spec!r}")


def _learned(path: Path) -> Reward:
    from t2ialign.reward.model import RewardModel

    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no reward model at {path}: train one with `t2ialign reward train RUN`, give its folder with "
            "--reward_path, or use --reward judge (the world's oracle) or --reward python:module:function"
        )
    model = RewardModel.load(path)
    n_train = json.loads((path / "config.json").read_text()).get("n_train")
    return Reward("learned", lambda ims, ps: model.score(list(ps), list(ims)), n_train, str(path))


def _python_callable(spec: str) -> Callable:
    parts = spec.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError(f"a python reward is 'python:module:function', got {spec!r}")
    _, module_name, fn_name = parts
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} ({e})") from e
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {fn_name!r}")
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {module_name}.{fn_name} is not callable")
    return fn
