"""Configuration: one dataclass per stage, validated on load, unknown keys are errors.

Every artifact is saved with its resolved config (``to_dict``) and seed, so that it can be remade.
Files may be TOML or JSON; a stage reads the table of its own name ("prompts", "judge", ...).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from t2ialign.config.dpo import (
    DPO_PAIR_SOURCES,
    DPO_UNUSED_TRAIN_FIELDS,
    DPOConfig,
    DPOTrainConfig,
)
from t2ialign.config.evaluate import (
    EvaluateConfig,
)
from t2ialign.config.finetune import (
    FINETUNE_WEIGHTS,
    SD_LEARNING_RATE,
    TIMESTEP_BIAS,
    WORLD_LEARNING_RATE,
    FinetuneConfig,
)
from t2ialign.config.generate import (
    SCHEDULERS,
    GenerateConfig,
)
from t2ialign.config.loop import (
    LOOP_D_MODEL,
    LOOP_LABELERS,
    LoopConfig,
)
from t2ialign.config.pretrain import (
    ClipPretrainConfig,
    PretrainConfig,
    PretrainDataConfig,
    UnetPretrainConfig,
    VaePretrainConfig,
)
from t2ialign.config.prompts import (
    PromptsConfig,
)
from t2ialign.config.reward import (
    REWARD_OBJECTIVES,
    ImageTowerConfig,
    RewardConfig,
)
from t2ialign.config.rl import (
    GUARD_ACTIONS,
    GUARD_ALIGNMENT,
    RLConfig,
    RLGuardConfig,
    RLSampleConfig,
    RLTrainConfig,
)
from t2ialign.core.config import ConfigError, at_least_one, from_dict, to_dict
from t2ialign.world.judge import JudgeTrainConfig

# every stage's table is importable from here, as before the split by stage
__all__ = [
    "ClipPretrainConfig",
    "Config",
    "ConfigError",
    "DPOConfig",
    "DPOTrainConfig",
    "DPO_PAIR_SOURCES",
    "DPO_UNUSED_TRAIN_FIELDS",
    "EvaluateConfig",
    "FINETUNE_WEIGHTS",
    "TIMESTEP_BIAS",
    "SD_LEARNING_RATE",
    "WORLD_LEARNING_RATE",
    "FinetuneConfig",
    "GUARD_ACTIONS",
    "GUARD_ALIGNMENT",
    "GenerateConfig",
    "ImageTowerConfig",
    "JudgeTrainConfig",
    "LOOP_D_MODEL",
    "LOOP_LABELERS",
    "LoopConfig",
    "PretrainConfig",
    "PretrainDataConfig",
    "PromptsConfig",
    "REWARD_OBJECTIVES",
    "RLConfig",
    "RLGuardConfig",
    "RLSampleConfig",
    "RLTrainConfig",
    "RewardConfig",
    "SCHEDULERS",
    "UnetPretrainConfig",
    "VaePretrainConfig",
    "at_least_one",
    "from_dict",
    "load_config",
    "to_dict",
]


@dataclass
class Config:
    """The whole run's config: one table per stage, read by that stage's command (``t2ialign generate``
    reads [generate]). Rejection sampling has no table: ``t2ialign sample`` takes its sampler from
    [generate] and its n and k from flags (sample.rejection.SampleConfig)."""

    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    judge: JudgeTrainConfig = field(default_factory=JudgeTrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


def load_config(path: str | Path | None = None, cls=Config):
    """Read a TOML or JSON file into ``cls`` (defaults when path is None)."""
    if path is None:
        return cls()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot parse config file {path}: {e}") from e
    return from_dict(cls, data)
