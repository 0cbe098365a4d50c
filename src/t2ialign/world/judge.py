"""The world judge: reads an image back into (count, color, shape, background) and judges it against a
prompt as good, bad or skip. It is the simulated human labeler and the automatic alignment metric.

A small CNN with one softmax head per attribute, trained on renders under heavy degradation
(``degrade.train_augment``) so that it reads blurry, imperfect images too. Its verdict is transparent:
P(match) is the product, over the attributes the prompt names, of P(attribute = asked value); good above
``good_threshold``, bad below ``bad_threshold``, skip (unsure, as the paper's labelers may) in between.
Weights ship with the package (safetensors + config.json); ``t2ialign world train-judge`` remakes them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..config import JudgeTrainConfig, to_dict
from . import vocab
from .degrade import degrade, train_augment
from .prompts import PromptSpec, parse_prompt
from .render import render, stable_seed

DEFAULT_JUDGE_PATH = Path(__file__).parent / "judge_weights"
HEADS = {kind: len(vocab.values(kind)) for kind in vocab.ATTRIBUTES}  # count 5, color 9, shape 10, bg 8


class JudgeNet(nn.Module):
    """Conv stack (every other layer strides 2) -> global average pool -> one linear head per attribute."""

    def __init__(self, channels=(24, 32, 48, 64, 96, 128, 128)):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(channels):
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2 if i % 2 else 1, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({k: nn.Linear(c_in, n) for k, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # x: (B, 3, H, W) in [0, 1] -> logits per attribute, (B, n_values)
        h = self.features((x - 0.5) / 0.25).mean(dim=(2, 3))  # (B, C)
        return {k: head(h) for k, head in self.heads.items()}


@dataclass(frozen=True)
class Verdict:
    label: str  # "good", "bad" or "skip"
    p_match: float  # P(every attribute the prompt names is as asked)
    reading: dict  # attribute -> (most likely value, its probability)


def decide(p_match: float, good_threshold: float, bad_threshold: float) -> str:
    """The verdict from P(match): good, bad, or skip when unsure."""
    if p_match >= good_threshold:
        return "good"
    if p_match <= bad_threshold:
        return "bad"
    return "skip"


def match_probability(probs: dict[str, torch.Tensor], specs: list[PromptSpec]) -> torch.Tensor:
    """P(match) per image: product over each prompt's named attributes of P(attribute = asked value).

    probs: attribute -> (N, n_values) softmax probabilities; specs: N prompts. Returns (N,).
    """
    out = torch.ones(len(specs), dtype=torch.float64)
    for i, spec in enumerate(specs):
        for kind, value in spec.constrained().items():
            out[i] *= float(probs[kind][i, vocab.index(kind, value)])
    return out


def to_batch(images, size: int) -> torch.Tensor:
    """PIL images, (H, W, 3) uint8 arrays, or a (N, H, W, 3) uint8 / (N, 3, H, W) float tensor
    -> (N, 3, size, size) float in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float() / 255.0
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"image tensors must be (N, H, W, 3) uint8 or (N, 3, H, W) float, got {tuple(x.shape)}"
            )
    else:
        arrs = []
        for im in images:
            a = np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im)
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
                raise ValueError(f"images must be RGB uint8 (H, W, 3), got {a.dtype} {a.shape}")
            arrs.append(torch.from_numpy(np.array(a)))  # a copy: PIL and memmaps hand out read-only buffers
        if not arrs:
            raise ValueError("no images given")
        shapes = {tuple(a.shape) for a in arrs}
        if len(shapes) > 1:
            arrs = [
                F.interpolate(
                    a.permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear", antialias=True
                )[0]
                .permute(1, 2, 0)
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
                for a in arrs
            ]
        x = torch.stack(arrs).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


class Judge:
    """Reads images and judges them against prompts. ``Judge.load()`` gives the shipped judge."""

    def __init__(self, net: JudgeNet, config: JudgeTrainConfig):
        self.net = net.eval()
        self.config = config

    @classmethod
    def load(cls, path: str | Path | None = None) -> Judge:
        path = Path(path) if path is not None else DEFAULT_JUDGE_PATH
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not cfg_file.is_file() or not weights.is_file():
            raise FileNotFoundError(
                f"no judge at {path} (needs config.json and model.safetensors); train one with `t2ialign world train-judge`"
            )
        meta = json.loads(cfg_file.read_text())
        for kind in vocab.ATTRIBUTES:
            if meta["vocab"][kind] != vocab.values(kind):
                raise ValueError(
                    f"judge at {path} was trained on another {kind} vocabulary: {meta['vocab'][kind]}"
                )
        config = JudgeTrainConfig(**{**meta["config"], "channels": tuple(meta["config"]["channels"])})
        net = JudgeNet(config.channels)
        net.load_state_dict(load_file(str(weights)))
        return cls(net, config)

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        meta = {
            "t2ialign_version": __version__,
            "config": to_dict(self.config),
            "vocab": {kind: vocab.values(kind) for kind in vocab.ATTRIBUTES},
            **(extra or {}),
        }
        (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")

    @torch.no_grad()
    def read(self, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Attribute probabilities: attribute -> (N, n_values)."""
        x = to_batch(images, self.config.size)
        chunks = [self.net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return {k: torch.cat([F.softmax(c[k].float(), dim=-1) for c in chunks]) for k in HEADS}

    def judge(self, images, prompts) -> list[Verdict]:
        """One verdict per (image, prompt) pair; prompts are texts or PromptSpecs."""
        specs = [parse_prompt(p) if isinstance(p, str) else p for p in prompts]
        probs = self.read(images)
        if len(specs) != len(probs["count"]):
            raise ValueError(f"{len(probs['count'])} images but {len(specs)} prompts")
        p_match = match_probability(probs, specs)
        out = []
        for i in range(len(specs)):
            reading = {}
            for kind in vocab.ATTRIBUTES:
                j = int(probs[kind][i].argmax())
                reading[kind] = (vocab.values(kind)[j], round(float(probs[kind][i, j]), 4))
            label = decide(float(p_match[i]), self.config.good_threshold, self.config.bad_threshold)
            out.append(Verdict(label, float(p_match[i]), reading))
        return out


# --- training -------------------------------------------------------------------------------------------


def _targets(specs: list[PromptSpec]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([vocab.index(k, getattr(s, k)) for s in specs]) for k in vocab.ATTRIBUTES}


def render_set(
    n: int, namespace: str, size: int, progress: bool = True
) -> tuple[np.ndarray, list[PromptSpec]]:
    """n renders of uniformly random full specs (all shapes, unseen objects included), seeded by namespace."""
    images = np.empty((n, size, size, 3), np.uint8)
    specs = []
    for i in tqdm(range(n), desc=f"render {namespace}", disable=not progress, leave=False):
        rng = np.random.default_rng(stable_seed(namespace, i))
        spec = PromptSpec(
            shape=vocab.values("shape")[rng.integers(HEADS["shape"])],
            count=vocab.values("count")[rng.integers(HEADS["count"])],
            color=vocab.values("color")[rng.integers(HEADS["color"])],
            background=vocab.values("background")[rng.integers(HEADS["background"])],
        )
        r = render(spec, seed=i, size=size)
        images[i] = r.image
        specs.append(r.spec)
    return images, specs


def train_judge(config: JudgeTrainConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train the judge's CNN on fresh renders and save it to out_dir. Returns validation accuracies."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    t0 = time.time()
    images, specs = render_set(config.n_train, f"judge-train-{config.seed}", config.size, progress)
    targets = _targets(specs)
    net = JudgeNet(config.channels)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = config.n_train // config.batch_size
    total = steps_per_epoch * config.epochs
    warmup = max(1, min(200, total // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    bar = tqdm(total=total, desc="train judge", disable=not progress)
    for _epoch in range(config.epochs):
        order = rng.permutation(config.n_train)
        net.train()
        for b in range(steps_per_epoch):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            batch = np.stack([train_augment(images[i], rng) for i in idx])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
            logits = net(x)
            loss = sum(F.cross_entropy(logits[k], targets[k][idx]) for k in HEADS)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    judge = Judge(net.eval(), config)
    report = selftest(judge, n=config.n_val, progress=progress)
    judge.save(out_dir, extra={"selftest": report, "train_seconds": round(time.time() - t0, 1)})
    return report


# --- validation -----------------------------------------------------------------------------------------


def _test_prompt(truth: PromptSpec, rng: np.random.Generator) -> tuple[PromptSpec, str]:
    """A prompt of a random category about this image: the true one (expect good) or one with a single
    attribute changed (expect bad), half and half."""
    from dataclasses import replace

    category = ("count", "color", "background", "combination")[rng.integers(4)]
    keep = {"count": ("count",), "color": ("color",), "background": ("background",)}.get(
        category, ("count", "color", "background")
    )
    spec = PromptSpec(shape=truth.shape, **{k: getattr(truth, k) for k in keep})
    if rng.random() < 0.5:
        return spec, "good"
    kind = list(spec.constrained())[rng.integers(len(spec.constrained()))]
    others = [v for v in vocab.values(kind) if v != getattr(spec, kind)]
    return replace(spec, **{kind: others[rng.integers(len(others))]}), "bad"


def selftest(judge: Judge, n: int = 2000, seed: int = 0, progress: bool = True) -> dict:
    """The judge on n fresh renders (seeds disjoint from training), clean and degraded.

    verdict_accuracy: correct verdicts among non-skipped ones, over true and single-attribute-perturbed
    prompts (half each); skip_rate: share skipped; per_attribute: accuracy of the most likely value.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    images, truths = render_set(n, f"judge-selftest-{seed}", judge.config.size, progress)
    rng = np.random.default_rng(stable_seed("selftest", seed))
    degraded = np.stack([degrade(im, rng) for im in images])
    cases = [_test_prompt(t, rng) for t in truths]
    report = {}
    for name, batch in (("clean", images), ("degraded", degraded)):
        probs = judge.read(batch)
        per_attr = {}
        for kind in vocab.ATTRIBUTES:
            pred = probs[kind].argmax(dim=1)
            per_attr[kind] = round(float((pred == _targets(truths)[kind]).float().mean()), 4)
        p_match = match_probability(probs, [c[0] for c in cases])
        labels = [decide(float(p), judge.config.good_threshold, judge.config.bad_threshold) for p in p_match]
        answered = [(lab, c[1]) for lab, c in zip(labels, cases, strict=True) if lab != "skip"]
        report[name] = {
            "n": n,
            "verdict_accuracy": round(sum(a == e for a, e in answered) / max(1, len(answered)), 4),
            "skip_rate": round(1 - len(answered) / n, 4),
            "per_attribute": per_attr,
        }
    return report
