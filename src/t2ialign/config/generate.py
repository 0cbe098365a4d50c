"""Sampling ([generate])."""

from __future__ import annotations

import re
from dataclasses import dataclass

from t2ialign.config._common import _check_precision
from t2ialign.core.config import ConfigError, at_least_one

SCHEDULERS = ("default", "dpm++", "ddim", "euler", "euler_a", "pndm")
COMPILE_BACKENDS = ("no", "inductor", "eager", "aot_eager")


@dataclass
class GenerateConfig:
    """Stage 2, sampling images into the run (``t2ialign generate``)."""

    # pretrained_model_name_or_path: a local diffusers Stable Diffusion folder; None = the shipped world model
    model: str | None = None
    images_per_prompt: int = 10  # the paper generates up to 60 per prompt; 27k images from 2,700 prompts
    num_inference_steps: int = 20
    guidance_scale: float = 5.0  # classifier-free guidance; 1.0 switches it off (half the UNet work)
    scheduler: str = "default"  # the pipeline's own (DPM-Solver++ for the world model), or one of SCHEDULERS
    batch_size: int = 64  # images per pipeline call, across prompts
    # "auto": bf16 autocast where the device computes bf16 natively (a GPU; a CPU with AVX512_BF16 or AMX),
    # fp16 on a GPU without bf16, else none. On a CPU without native bf16 (AVX2 only) bf16 is emulated and
    # sampling ran 20x slower than fp32 (docs/throughput.md). Or "no", "bf16", "fp16" (fp16: CUDA only).
    mixed_precision: str = "auto"
    # "no", or a torch.compile backend for the UNet: "inductor" (compiles kernels once per process: on a
    # 2-core CPU 150 s, 20-60 s with inductor's disk cache; then bf16 sampling 1.2-1.9x faster, fp32 1.1x:
    # it pays from a few thousand images; docs/throughput.md), "eager" or "aot_eager" (trace only, no
    # speed-up: for checking the wiring)
    compile: str = "no"
    height: int | None = None  # None: the model's native size
    width: int | None = None
    seed: int = 0  # image seeds derive from (seed, prompt, index): same seed, same image
    role: str = "human"  # human (D_human, to be labeled), unlabeled (D_unlabel) or eval
    # where the pipeline samples: "auto" = this process's GPU (cuda:LOCAL_RANK under torchrun or
    # accelerate launch) when CUDA is there, else the CPU; or a torch device such as "cpu", "cuda:1", "mps"
    device: str = "auto"

    def __post_init__(self):
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"generate.device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(
                f"generate.scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}"
            )
        _check_precision("generate", self.mixed_precision, auto=True)
        if self.compile not in COMPILE_BACKENDS:
            raise ConfigError(
                f"generate.compile must be one of {', '.join(COMPILE_BACKENDS)}, got {self.compile!r}"
            )
        if self.role not in ("human", "unlabeled", "eval"):
            raise ConfigError(f"generate.role must be human, unlabeled or eval, got {self.role!r}")
        at_least_one(self, "generate", "images_per_prompt", "num_inference_steps", "batch_size")
        if self.guidance_scale < 1.0:
            raise ConfigError(f"generate.guidance_scale must be >= 1, got {self.guidance_scale}")
