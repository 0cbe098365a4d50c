"""The world judge: reads an image back into (count, color, shape, background) and judges it against a
prompt as good, bad or skip. It is the simulated human labeler and the automatic alignment metric.

A small CNN with one softmax head per attribute, trained on renders under heavy degradation
(``degrade.train_augment``) so that it reads blurry, imperfect images too. The count head reads 0 (no
shape), 1 to 5, and 6 meaning "six or more" (``vocab.JUDGE_COUNTS``), so an empty or over-drawn image is
an error of count, not a "one" or a "five". Its verdict is transparent: P(match) is the product, over the
attributes the prompt names, of P(attribute = asked value), times P(count >= 1) when the prompt names no
count; good above ``good_threshold``, bad below ``bad_threshold``, skip (unsure, as the paper's labelers
may) in between.
Weights ship with the package (safetensors + config.json); ``t2ialign world train-judge`` remakes them.
"""

from __future__ import annotations

import json
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

from t2ialign import __version__
from t2ialign.core.config import ConfigError, at_least_one, to_dict
from t2ialign.core.seeds import stable_seed
from t2ialign.core.training import TrainState, fit
from t2ialign.world import vocab
from t2ialign.world.degrade import degrade, train_augment
from t2ialign.world.prompts import PromptSpec, parse_prompt
from t2ialign.world.render import Scene, render_scene


@dataclass
class JudgeTrainConfig:
    """Training of the world judge's small CNN (``t2ialign world train-judge``)."""

    size: int = 64  # image side in pixels; the judge resizes other sizes to this
    # distinct rendered images (world.judge.random_scene: the count class uniform over 0, 1-5 and 6+, so
    # 1/7 are empty and 1/7 have 6-7 shapes); each epoch augments them afresh. 56,000 keeps 8,000 per
    # count class, what each of 1-5 had when the judge read only those (40,000 for 7 classes left the
    # degraded shape accuracy at 93% instead of 97%).
    n_train: int = 56_000
    n_val: int = 2_000  # validation renders, drawn the same way (judged clean and degraded)
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3  # AdamW peak learning rate; linear warm-up (10% of steps, at most 200), cosine to 0
    weight_decay: float = 1e-4
    channels: tuple[int, ...] = (24, 32, 48, 64, 96, 128, 128)  # conv widths; every other layer strides 2
    # Verdict thresholds on P(match) = product over the prompt's attributes of P(attribute = asked value):
    # good above good_threshold, bad below bad_threshold, skip (unsure) between.
    good_threshold: float = 0.6
    bad_threshold: float = 0.4
    seed: int = 0

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if self.size < 32:
            raise ConfigError(f"judge.size must be >= 32 pixels, got {self.size}")
        if not 0.0 < self.bad_threshold <= self.good_threshold < 1.0:
            raise ConfigError("judge thresholds need 0 < bad_threshold <= good_threshold < 1")
        at_least_one(self, "judge", "n_train", "n_val", "epochs", "batch_size")


DEFAULT_JUDGE_PATH = Path(__file__).parent / "judge_weights"
# What each head reads, in class-index order. Count: 0, 1, ..., 5 and 6 = "six or more" (class index of a
# count k is min(k, 6), ``vocab.count_class``); the others: the prompts' vocabulary.
HEAD_VALUES: dict[str, list] = {
    kind: list(vocab.JUDGE_COUNTS) if kind == "count" else vocab.values(kind) for kind in vocab.ATTRIBUTES
}
HEADS = {kind: len(v) for kind, v in HEAD_VALUES.items()}  # count 7, color 9, shape 10, background 8


def class_index(kind: str, value) -> int:
    """Class index of an attribute value in the judge's head (a count of 6 or more is class 6)."""
    return vocab.count_class(value) if kind == "count" else vocab.index(kind, value)


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
    reading: dict  # attribute -> (most likely value, its probability); count 6 means six or more


def decide(p_match: float, good_threshold: float, bad_threshold: float) -> str:
    """The verdict from P(match): good, bad, or skip when unsure."""
    if p_match >= good_threshold:
        return "good"
    if p_match <= bad_threshold:
        return "bad"
    return "skip"


def match_probability(probs: dict[str, torch.Tensor], specs: list[PromptSpec]) -> torch.Tensor:
    """P(match) per image: product over each prompt's named attributes of P(attribute = asked value).

    Every prompt asks for at least one object, so a prompt that names no count ("A red colored circle")
    has the factor P(count >= 1) = 1 - P(count class 0) instead: an empty image is bad for every prompt,
    whatever the shape and color heads guess about the shape that is not there. A named count k (1-5)
    uses class k alone, so six shapes for "Five circles" are as wrong as four.

    probs: attribute -> (N, n_classes) softmax probabilities (count: 7 classes); specs: N prompts.
    Returns (N,).
    """
    if probs["count"].shape[1] != HEADS["count"]:
        raise ValueError(
            f"count probabilities need {HEADS['count']} classes (0-5 and 6+), got {probs['count'].shape[1]}"
        )
    out = torch.ones(len(specs), dtype=torch.float64)
    for i, spec in enumerate(specs):
        if spec.count is None:
            out[i] *= 1.0 - float(probs["count"][i, 0])
        for kind, value in spec.constrained().items():
            out[i] *= float(probs[kind][i, class_index(kind, value)])
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
        if meta["vocab"]["count"] == list(range(vocab.MIN_COUNT, vocab.MAX_COUNT + 1)):
            raise ValueError(
                f"judge at {path} is an old 5-class judge (counts 1-5 only): it reads an empty image as "
                f"'one' and six shapes as 'five'; retrain it with `t2ialign world train-judge --out DIR` "
                f"(count classes 0-5 and 6+) or use the shipped judge"
            )
        for kind in vocab.ATTRIBUTES:
            if meta["vocab"][kind] != HEAD_VALUES[kind]:
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
            "vocab": HEAD_VALUES,  # the heads' classes; count 6 = six or more
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
                reading[kind] = (HEAD_VALUES[kind][j], round(float(probs[kind][i, j]), 4))
            label = decide(float(p_match[i]), self.config.good_threshold, self.config.bad_threshold)
            out.append(Verdict(label, float(p_match[i]), reading))
        return out


# --- training -------------------------------------------------------------------------------------------


NO_SHAPE = -1  # target of the shape and color heads on an empty scene: nothing to read


def _targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Class index per attribute, (N,) each; NO_SHAPE for the shape and color of an empty scene."""
    return {
        k: torch.tensor(
            [
                NO_SHAPE if k in ("shape", "color") and s.count == 0 else class_index(k, getattr(s, k))
                for s in scenes
            ]
        )
        for k in vocab.ATTRIBUTES
    }


def head_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one head, (B, n_classes) logits against (B,) class indices, over the rows whose
    target is not NO_SHAPE.

    An empty image has no shape or color, so those heads learn nothing from it: what they read there
    means nothing, and the verdict does not lean on it (``match_probability``'s factor P(count >= 1)).
    (Training them toward the uniform distribution on empty images instead measured the same in the
    selftest, and is one more rule.)
    """
    if not bool((target != NO_SHAPE).any()):
        return logits.sum() * 0.0  # a batch of empty images only: no shape to learn from
    return F.cross_entropy(logits, target, ignore_index=NO_SHAPE)


def random_scene(rng: np.random.Generator) -> Scene:
    """A uniformly random full scene for the judge: shape, color and background uniform, and the count
    class uniform over 0, 1, ..., 5, 6+ (6+ is 6 or 7 shapes, half each).

    So empty and over-drawn images are 1/7 of the data each, as often as every count a prompt can ask:
    the count head sees balanced classes, and its prior favours no count over another.
    """
    count = int(rng.integers(len(vocab.JUDGE_COUNTS)))
    if count == vocab.MANY:
        count += int(rng.integers(2))  # 6 or 7
    return Scene(
        shape=vocab.values("shape")[rng.integers(HEADS["shape"])],
        count=count,
        color=vocab.values("color")[rng.integers(HEADS["color"])],
        background=vocab.values("background")[rng.integers(HEADS["background"])],
    )


def render_set(n: int, namespace: str, size: int, progress: bool = True) -> tuple[np.ndarray, list[Scene]]:
    """n renders of random scenes (``random_scene``: all shapes, unseen objects included; 0 to 7 shapes),
    seeded by namespace. Returns (n, size, size, 3) uint8 images and their scenes."""
    images = np.empty((n, size, size, 3), np.uint8)
    scenes = []
    for i in tqdm(range(n), desc=f"render {namespace}", disable=not progress, leave=False):
        scene = random_scene(np.random.default_rng(stable_seed(namespace, i)))
        images[i] = render_scene(scene, seed=i, size=size).image
        scenes.append(scene)
    return images, scenes


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
    order = None

    def loss_fn(step: int) -> torch.Tensor:
        nonlocal order
        b = step % steps_per_epoch
        if b == 0:  # each epoch a new order, and fresh augmentations
            order = rng.permutation(config.n_train)
        idx = order[b * config.batch_size : (b + 1) * config.batch_size]
        batch = np.stack([train_augment(images[i], rng) for i in idx])
        logits = net(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0)
        return sum(head_loss(logits[k], targets[k][idx]) for k in HEADS)

    fit(
        TrainState(net, opt, config={}),
        loss_fn,
        name="train judge",
        steps=total,
        lr=config.lr,
        warmup=max(1, min(200, total // 10)),
        schedule="cosine",
        max_grad_norm=None,
        progress=progress,
    )
    judge = Judge(net.eval(), config)
    report = selftest(judge, n=config.n_val, progress=progress)
    judge.save(out_dir, extra={"selftest": report, "train_seconds": round(time.time() - t0, 1)})
    return report


# --- validation -----------------------------------------------------------------------------------------


SCENE_GROUPS = ("empty", "1-5", "6+")  # selftest verdicts are also reported per group of scene counts


def _scene_group(count: int) -> str:
    return "empty" if count == 0 else "6+" if count >= vocab.MANY else "1-5"


def _test_prompt(truth: Scene, rng: np.random.Generator) -> tuple[PromptSpec, str]:
    """A prompt of a random category about this image: the true one or one with a single attribute
    changed (expect bad), half and half.

    A prompt can only ask for 1-5 shapes, so for an empty scene it asks for one and for 6-7 shapes for
    five, the nearest counts, and the "true" prompt is expected bad when it names a count (and always
    for an empty image); a prompt naming no count is expected good on an over-drawn image.
    """
    from dataclasses import replace

    category = ("count", "color", "background", "combination")[rng.integers(4)]
    keep = {"count": ("count",), "color": ("color",), "background": ("background",)}.get(
        category, ("count", "color", "background")
    )
    asked = {
        "count": min(max(truth.count, vocab.MIN_COUNT), vocab.MAX_COUNT),
        "color": truth.color,
        "background": truth.background,
    }
    spec = PromptSpec(shape=truth.shape, **{k: asked[k] for k in keep})
    if rng.random() < 0.5:
        right = truth.count >= 1 and spec.count in (None, truth.count)
        return spec, "good" if right else "bad"
    kind = list(spec.constrained())[rng.integers(len(spec.constrained()))]
    others = [v for v in vocab.values(kind) if v != getattr(spec, kind)]
    return replace(spec, **{kind: others[rng.integers(len(others))]}), "bad"


def _verdict_stats(labels: list[str], expected: list[str]) -> dict:
    answered = [(lab, e) for lab, e in zip(labels, expected, strict=True) if lab != "skip"]
    return {
        "n": len(labels),
        "verdict_accuracy": round(sum(a == e for a, e in answered) / max(1, len(answered)), 4),
        "skip_rate": round(1 - len(answered) / max(1, len(labels)), 4),
    }


def selftest(judge: Judge, n: int = 2000, seed: int = 0, progress: bool = True) -> dict:
    """The judge on n fresh renders (seeds disjoint from training), clean and degraded.

    The renders are drawn as in training (``random_scene``): 1/7 empty, 1/7 with 6-7 shapes. Per set:
    verdict_accuracy: correct verdicts among non-skipped ones, over true and single-attribute-perturbed
    prompts (half each; see ``_test_prompt``); skip_rate: share skipped; per_attribute: accuracy of the
    most likely value (count over all seven classes; color and shape over images that have a shape);
    per_count_class: count accuracy per class "0" ... "5", "6+"; by_scene: the verdict statistics for
    empty, 1-5 and 6+ scenes apart ("1-5" is comparable to a judge that never saw the other two).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    images, truths = render_set(n, f"judge-selftest-{seed}", judge.config.size, progress)
    rng = np.random.default_rng(stable_seed("selftest", seed))
    degraded = np.stack([degrade(im, rng) for im in images])
    cases = [_test_prompt(t, rng) for t in truths]
    targets = _targets(truths)
    groups = [_scene_group(t.count) for t in truths]
    report = {}
    for name, batch in (("clean", images), ("degraded", degraded)):
        probs = judge.read(batch)
        per_attr = {}
        for kind in vocab.ATTRIBUTES:
            pred, target = probs[kind].argmax(dim=1), targets[kind]
            has = target != NO_SHAPE
            per_attr[kind] = round(float((pred[has] == target[has]).float().mean()), 4) if has.any() else None
        count_pred = probs["count"].argmax(dim=1)
        per_count = {}
        for c in vocab.JUDGE_COUNTS:
            rows = targets["count"] == c
            if rows.any():
                per_count[vocab.count_label(c)] = round(float((count_pred[rows] == c).float().mean()), 4)
        p_match = match_probability(probs, [c[0] for c in cases])
        labels = [decide(float(p), judge.config.good_threshold, judge.config.bad_threshold) for p in p_match]
        expected = [c[1] for c in cases]
        by_scene = {}
        for g in SCENE_GROUPS:
            rows = [i for i in range(n) if groups[i] == g]
            if rows:
                by_scene[g] = _verdict_stats([labels[i] for i in rows], [expected[i] for i in rows])
        report[name] = {
            **_verdict_stats(labels, expected),
            "per_attribute": per_attr,
            "per_count_class": per_count,
            "by_scene": by_scene,
        }
    return report
