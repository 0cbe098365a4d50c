"""Per-prompt advantage normalization (ddpo-pytorch's ``PerPromptStatTracker``), serializable so that a
resumed run normalizes exactly as the uninterrupted one did.

Each prompt keeps a buffer of its last ``buffer_size`` rewards (across epochs). A sample's advantage is
(reward - mean) / (std + 1e-6) over its prompt's buffer, once the buffer holds ``min_count`` rewards;
before that, over the whole epoch's rewards. ddpo-pytorch keeps this state in memory only, so its
resumed runs start with empty buffers; here the buffers are part of every checkpoint (``to_json``).
"""

from __future__ import annotations

from collections import deque

import numpy as np

EPS = 1e-6  # added to std, as ddpo-pytorch: a prompt whose rewards all tie gets advantage 0, not NaN


class PerPromptStatTracker:
    def __init__(self, buffer_size: int, min_count: int):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards) -> np.ndarray:
        """Add the epoch's rewards (N,) of ``prompts`` (N texts) and return their advantages (N,)."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.shape != (len(prompts),):
            raise ValueError(f"{len(prompts)} prompts but rewards of shape {rewards.shape}")
        prompts_arr = np.array(prompts, dtype=object)
        advantages = np.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):  # first-seen order: the same in every process
            sel = prompts_arr == prompt
            buf = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buf.extend(rewards[sel].tolist())
            ref = np.asarray(buf) if len(buf) >= self.min_count else rewards
            advantages[sel] = (rewards[sel] - ref.mean()) / (ref.std() + EPS)
        return advantages

    def to_json(self) -> dict:
        """The whole state as JSON (floats round-trip exactly through Python's json)."""
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "buffers": {p: list(b) for p, b in self.buffers.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> PerPromptStatTracker:
        tracker = cls(data["buffer_size"], data["min_count"])
        for prompt, values in data["buffers"].items():
            tracker.buffers[prompt] = deque((float(v) for v in values), maxlen=tracker.buffer_size)
        return tracker
