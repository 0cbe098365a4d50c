"""The training core: what every trainer of the package shares, written once (as diffusers' ``training_utils``).

- ``lr_factor``: the learning-rate schedule, a pure function of the step (linear warm-up, then cosine to 0
  or constant), so a resumed run needs no scheduler state and every process agrees;
- ``check_finite``: the non-finite guard, raised before a bad loss reaches the weights or a checkpoint;
- ``TrainState``: the trainable weights, the optimizer and the optional EMA as one atomic checkpoint
  (``core.checkpoint``), saved every N steps and restored exactly;
- ``fit``: the plain step loop (schedule, guard, clipping, EMA, checkpoints, snapshots, progress) for a
  trainer whose loss is a function of the step alone. ``finetune`` keeps its own loop, for accelerate's
  gradient accumulation over processes, on the same pieces.

A trainer holds only what is its own: its data, its loss and its model. Exact resume follows when its loss
draws data and noise from the step alone: the checkpoint of step s holds everything else.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from t2ialign.core.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)

SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (or constant)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group at ``lr`` times its ``lr_scale`` (1 if it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def check_finite(loss: torch.Tensor, name: str, step: int, gather: Callable | None = None) -> None:
    """Raise ``FloatingPointError`` when the loss (gathered over processes, with ``gather``) is not finite."""
    value = loss.detach().reshape(1)
    if gather is not None:
        value = gather(value)
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(
            f"[{name}] non-finite loss at step {step}: stopping before it reaches the weights or a checkpoint"
        )


class TrainState:
    """A module's trainable weights, their optimizer and an optional diffusers ``EMAModel``, checkpointed
    together.

    The checkpoint holds ``model.<name>`` for every entry of the module's ``state_dict()`` (or, with
    ``trainable_only``, of its trainable parameters: LoRA adapters, say), the optimizer's tensors,
    ``ema.<i>`` for the EMA's shadow of the i-th trainable parameter, and the state
    ``{"config", "optimizer", "loss", "ema_step"}``; ``config`` is the trainer's identity, and a checkpoint
    of another identity is refused on resume.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema=None,
        *,
        config: dict,
        root: Path | None = None,
        keep: int = 2,
        trainable_only: bool = False,
    ):
        self.module, self.optimizer, self.ema = module, optimizer, ema
        self.config, self.root, self.keep, self.trainable_only = config, root, keep, trainable_only
        self.named = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.params = list(self.named.values())

    def restore(self, tensors: dict, state: dict) -> int:
        """Load a checkpoint's tensors and state (from ``load_checkpoint``); returns its step."""
        model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        if self.trainable_only:
            with torch.no_grad():
                for n, p in self.named.items():
                    p.copy_(model[n])
        else:
            self.module.load_state_dict(model)
        optimizer_from_tensors(self.optimizer, tensors, state["optimizer"])
        if self.ema is not None:
            self.ema.shadow_params = [tensors[f"ema.{i}"].clone() for i in range(len(self.params))]
            self.ema.optimization_step = state["ema_step"]
        return state["step"]

    def resume_latest(self, name: str, echo: Callable[[str], None] = print) -> int:
        """Restore the newest checkpoint under ``root``, if any; returns the step to start from."""
        ckpt = latest_checkpoint(self.root) if self.root is not None else None
        if ckpt is None:
            return 0
        step = self.restore(*load_checkpoint(ckpt, expect_config=self.config))
        echo(f"[{name}] resumed from {ckpt} at step {step}")
        return step

    def save(self, step: int, loss: float, extra: dict | None = None) -> None:
        """An atomic checkpoint of the state after ``step`` optimizer steps; ``extra`` (JSON) is a
        trainer's own state beside the weights (rl's per-prompt reward buffers), read back from the
        loaded state's "extra"."""
        source = self.named.items() if self.trainable_only else self.module.state_dict().items()
        tensors = {f"model.{k}": v.detach() for k, v in source}
        opt_tensors, opt_state = optimizer_to_tensors(self.optimizer)
        tensors.update(opt_tensors)
        state = {"config": self.config, "optimizer": opt_state, "loss": loss}
        if extra is not None:
            state["extra"] = extra
        if self.ema is not None:
            tensors.update({f"ema.{i}": t for i, t in enumerate(self.ema.shadow_params)})
            state["ema_step"] = self.ema.optimization_step
        save_checkpoint(self.root, step, tensors, state, keep=self.keep)

    @contextlib.contextmanager
    def ema_weights(self):
        """The module holds its EMA weights inside the block (for a snapshot), its raw ones after."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def finish(self) -> nn.Module:
        """The module with its final weights: the EMA's, when EMA is on."""
        if self.ema is not None:
            self.ema.copy_to(self.params)
        return self.module.eval()


def fit(
    state: TrainState,
    loss_fn: Callable[[int], torch.Tensor],
    *,
    name: str,
    steps: int,
    lr: float,
    warmup: int = 0,
    schedule: str = "cosine",
    max_grad_norm: float | None = 1.0,
    start: int = 0,
    checkpointing_steps: int = 0,
    snapshot: Callable[[int], None] | None = None,
    snapshot_steps: int = 0,
    progress: bool = True,
) -> list[float]:
    """Steps ``start`` to ``steps`` of AdamW-style training on ``loss_fn(step)``; returns their losses.

    Each step: the scheduled learning rate, the loss, the non-finite guard, backward, clipping at
    ``max_grad_norm`` (None: none), the optimizer step, the EMA step. A checkpoint every
    ``checkpointing_steps`` steps and after the last (0: none), and ``snapshot(step)`` every
    ``snapshot_steps`` steps with the module holding its EMA weights.
    """
    state.module.train()
    losses: list[float] = []
    bar = tqdm(range(start, steps), desc=name, initial=start, total=steps, disable=not progress)
    for step in bar:
        set_lr(state.optimizer, lr * lr_factor(step, warmup, steps, schedule))
        loss = loss_fn(step)
        check_finite(loss, name, step)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(state.params, max_grad_norm)
        state.optimizer.step()
        if state.ema is not None:
            state.ema.step(state.params)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if checkpointing_steps and ((step + 1) % checkpointing_steps == 0 or step + 1 == steps):
            state.save(step + 1, float(np.mean(losses[-100:])))
        if snapshot is not None and snapshot_steps and (step + 1) % snapshot_steps == 0:
            with state.ema_weights():
                snapshot(step + 1)
    bar.close()
    return losses
