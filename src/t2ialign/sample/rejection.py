"""Stage 6: rejection sampling with the learned reward (paper Sec. 4.3, "Rejection sampling"; Fig. 3b, 3c).

For each prompt, generate n = ``best_of`` candidate images, score them with r_phi and keep the k = ``keep``
with the greatest reward (the paper: 16 images from the original model, the top 4 kept). The paper compares
these with k randomly sampled images; here those are the first k candidates, seeds
``image_seed(seed, "eval", prompt, i)`` for i < k: every seed is an independent draw, so the first k are a
random sample, and they are exactly the images ``t2ialign generate --role eval --images-per-prompt k`` (same
model, sampler and seed) makes. Candidates are stored with role "eval", so the baseline costs nothing more.

It works on any local Stable Diffusion pipeline folder: the base model or a fine-tuned one (the paper notes
that rejection sampling applies on top of fine-tuning too, footnote 11).

The selection is written to ``RUN/rejection/<model slug>-best<n>-keep<k>.json`` (see :func:`write_selection`
for its format) and its summary to metrics.json, section ``rejection_sampling``, keyed by the file's stem.
A rerun generates only what is missing and gives the same selection.

Under ``torchrun`` every process runs the same command: the candidates and their embeddings are split
over the processes (``generate``, ``Embeddings.ensure_shared``), every process scores them all (a small
MLP) and rank 0 writes the selection and metrics.json.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2ialign import __version__
from t2ialign.config import ConfigError, GenerateConfig, to_dict
from t2ialign.core import dist
from t2ialign.core.cliutil import add_config, add_sampler_args, config_from_args, subcommand
from t2ialign.core.fingerprint import module_fingerprint
from t2ialign.core.fsutil import atomic_write
from t2ialign.generate.images import generate, image_seed, select_prompts, stored_images
from t2ialign.store import Store

SELECTION_FORMAT = "t2ialign.rejection_sampling/1"
SELECTION_DIRNAME = "rejection"
METRICS_SECTION = "rejection_sampling"
REWARD_DIRNAME = "reward"  # RUN/reward: where `t2ialign reward train` writes the reward model by default
SCORE_BATCH = 4096  # (prompt, image) pairs per reward-MLP call


@dataclass
class SampleConfig:
    """Stage 6, rejection sampling (``t2ialign sample``; paper Sec. 4.3)."""

    best_of: int = 16  # n: candidate images generated and scored per prompt (the paper: 16)
    keep: int = 4  # k: the images with the greatest reward kept per prompt (the paper: 4); k <= n
    reward: str | None = None  # reward model folder (config.json + model.safetensors); None = RUN/reward
    # How candidates are sampled: model (None = the shipped world model), steps, guidance, scheduler, batch
    # size, precision and seed. Its images_per_prompt and role do not apply: candidates are always
    # ``best_of`` images of role "eval" (see candidate_config).
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig(role="eval"))

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for name in ("best_of", "keep"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"sample.{name} must be an integer >= 1, got {v!r}")
        if self.keep > self.best_of:
            raise ConfigError(f"sample.keep ({self.keep}) must be <= sample.best_of ({self.best_of})")


def candidate_config(cfg: SampleConfig) -> GenerateConfig:
    """The generate config of the candidates: ``best_of`` images per prompt, role eval."""
    return dataclasses.replace(cfg.generate, images_per_prompt=cfg.best_of, role="eval")


def reward_path(cfg: SampleConfig, store: Store) -> Path:
    return Path(cfg.reward) if cfg.reward is not None else store.run_dir / REWARD_DIRNAME


def model_slug(model_id: str) -> str:
    """A file-name-safe form of a model id ("t2ialign/world-sd" -> "t2ialign-world-sd"); a long id (a deep
    local path) keeps its last characters and gets a hash of the whole id."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model_id).strip("-")
    if len(slug) > 64 or not slug:
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:12]
        slug = f"{slug[-48:].strip('-')}-{digest}".strip("-")
    return slug


def selection_path(store: Store, model_id: str, best_of: int, keep: int) -> Path:
    return store.run_dir / SELECTION_DIRNAME / f"{model_slug(model_id)}-best{best_of}-keep{keep}.json"


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's weights: which exact reward model made a selection."""
    return module_fingerprint(module, sample_bytes=None, with_config=False)


def top_k(rewards: list[float], k: int) -> list[int]:
    """Indices of the k greatest rewards, greatest first; equal rewards in index (seed) order."""
    if not 1 <= k <= len(rewards):
        raise ValueError(f"cannot keep {k} of {len(rewards)} candidates")
    return sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))[:k]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def choose_prompts(
    store: Store,
    splits: list[str],
    category: str | None = None,
    max_prompts: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Prompt texts of the given splits (and category), up to a seeded ``max_prompts`` of each split (the
    paper tests 60 seen and 60 unseen prompts), in stored order within each split."""
    if not splits:
        raise ValueError("give at least one prompt split")
    out: list[str] = []
    for split in dict.fromkeys(splits):
        rows = store.list_prompts(split=split, category=category)
        out += [r["text"] for r in select_prompts(rows, max_prompts, seed)]
    if not out:
        raise ValueError(
            f"no prompts in {store.run_dir} (splits {', '.join(splits)}, category {category}); "
            "run `t2ialign prompts` first"
        )
    return out


def _find_candidates(
    store: Store, prompts: list[str], gen_cfg: GenerateConfig, model_id: str, revision: str, sampler: dict
) -> dict[str, list[dict]]:
    """Each prompt's candidate image rows, in seed-index order; a clear error for any that is missing."""
    # a model changed in place, or sampled with other settings, makes (and is judged on) other images
    rows = {
        (r["prompt"], r["seed"]): r for r in stored_images(store, model_id, revision, sampler, role="eval")
    }
    out: dict[str, list[dict]] = {}
    for p in prompts:
        cands = []
        for i in range(gen_cfg.images_per_prompt):
            seed = image_seed(gen_cfg.seed, "eval", p, i)
            r = rows.get((p, seed))
            if r is None:
                raise ValueError(
                    f"candidate {i} (seed {seed}) of prompt {p!r} is not in the run: the model made an image "
                    "byte-identical to one already stored (a degenerate model), so generate kept only one"
                )
            cands.append(r)
        out[p] = cands
    return out


def _score(store: Store, reward, candidates: dict[str, list[dict]], progress: bool) -> dict[str, list[float]]:
    """Reward of every candidate with its prompt, through the run's CLIP embedding cache."""
    emb = reward.embeddings(store)  # of the CLIP the reward reads (its tuned copy, if it tuned one)
    pairs = [(p, r["sha256"]) for p, rows in candidates.items() for r in rows]
    emb.ensure_shared([s for _, s in pairs], list(candidates), progress)  # split under torchrun
    # In float64, then rounded to float32: an image's reward does not then depend on which other images
    # share its batch (float32 matmuls of another batch size may round differently in the last bits, and
    # flip a near tie between a rerun on fewer prompts and the first run).
    mlp = copy.deepcopy(reward.mlp).double().eval()
    scores: list[float] = []
    for i in range(0, len(pairs), SCORE_BATCH):
        chunk = pairs[i : i + SCORE_BATCH]
        x = emb.images.get([s for _, s in chunk]).double()  # (B, D)
        z = emb.texts.get([p for p, _ in chunk]).double()  # (B, D)
        with torch.no_grad():
            scores += mlp(x, z).float().tolist()
    if not all(math.isfinite(s) for s in scores):
        raise FloatingPointError("the reward model gave a non-finite reward")
    out, j = {}, 0
    for p, rows in candidates.items():
        out[p] = scores[j : j + len(rows)]
        j += len(rows)
    return out


def rejection_sample(
    store: Store,
    prompts: list[str],
    cfg: SampleConfig,
    reward=None,
    pipe=None,
    model_info: tuple[str, str] | None = None,
    progress: bool = True,
) -> dict:
    """Generate ``cfg.best_of`` candidates per prompt, keep the ``cfg.keep`` with the greatest reward.

    The "random k" baseline of the paper's Fig. 3(b) is the first ``keep`` candidates (seed indices
    0..keep-1), the same images as ``generate`` with ``images_per_prompt=keep, role="eval"``.

    ``reward`` is a loaded :class:`~t2ialign.reward.model.RewardModel` (that of ``cfg.reward``), else it is
    loaded from ``cfg.reward`` (default RUN/reward). ``pipe`` and ``model_info`` (model id, revision) may be
    passed by a caller that already loaded the pipeline, else ``cfg.generate.model`` is loaded. Writes the
    selection file and the metrics entry; returns the summary (also stored in the file).
    """
    cfg.validate()
    _check_prompts(store, prompts)
    rpath = reward_path(cfg, store)
    reward = reward if reward is not None else _load_reward(rpath, store)
    pipe, (model_id, revision) = _pipeline(cfg, pipe, model_info)

    t0 = time.time()
    gen_cfg = candidate_config(cfg)
    gen = generate(gen_cfg, store, prompts, pipe=pipe, model_info=(model_id, revision), progress=progress)
    candidates = _find_candidates(store, prompts, gen_cfg, model_id, revision, gen["sampler"])
    rewards = _score(store, reward, candidates, progress)
    per_prompt = [{"prompt": p} | _select(candidates[p], rewards[p], cfg.keep) for p in prompts]

    path = selection_path(store, model_id, cfg.best_of, cfg.keep)
    summary = _summary(store, path, cfg, (model_id, revision), per_prompt)
    summary |= {"generated": gen["generated"], "seconds": round(time.time() - t0, 2)}
    selection = {
        "format": SELECTION_FORMAT,
        "t2ialign_version": __version__,
        "model_id": model_id,
        "model_revision": revision,
        "reward": {
            "path": str(rpath.resolve()),
            "weights": weights_digest(reward.trained_modules()),
            "clip": reward.meta["clip"],
        },
        "best_of": cfg.best_of,
        "keep": cfg.keep,
        "generate": to_dict(gen_cfg),
        "summary": summary,
        "prompts": per_prompt,
    }
    # Every process scored the same candidates alike; rank 0 writes, and the broadcast holds the others
    # until the file is there (they all return rank 0's summary).
    if dist.is_main():
        write_selection(path, selection)
        sections = store.read_metrics().get(METRICS_SECTION, {})
        store.update_metrics(**{METRICS_SECTION: {**sections, path.stem: summary}})
    return dist.broadcast(summary)


def _check_prompts(store: Store, prompts: list[str]) -> None:
    """ValueError unless ``prompts`` is a non-empty list of distinct prompts of the run."""
    if not prompts:
        raise ValueError("no prompts given")
    if len(set(prompts)) != len(prompts):
        dup = next(p for p in prompts if prompts.count(p) > 1)
        raise ValueError(f"prompt {dup!r} is given twice")
    known = {r["text"] for r in store.list_prompts()}
    unknown = [p for p in prompts if p not in known]
    if unknown:
        raise ValueError(
            f"{len(unknown)} prompts are not in the run (e.g. {unknown[0]!r}); run `t2ialign prompts` first"
        )


def _load_reward(rpath: Path, store: Store):
    from t2ialign.reward.model import RewardModel

    if not (rpath / "config.json").is_file():
        raise FileNotFoundError(
            f"no reward model at {rpath}; train one with `t2ialign reward train {store.run_dir}` or "
            "pass its folder (--reward)"
        )
    return RewardModel.load(rpath)  # refuses a CLIP other than the one it was trained on


def _pipeline(cfg: SampleConfig, pipe, model_info: tuple[str, str] | None):
    """The pipeline and its (model id, revision): the one passed in, else ``cfg.generate.model`` loaded."""
    from t2ialign.models.load import load_pipeline

    if pipe is None:
        pipe, model_id, revision = load_pipeline(cfg.generate.model)
        return pipe, (model_id, revision)
    if model_info is None:
        raise ValueError("a pipeline passed in needs its model_info (model id, revision)")
    return pipe, model_info


def _select(rows: list[dict], rewards: list[float], keep: int) -> dict:
    """One prompt's entry of the selection: its candidates, the ``keep`` kept and the random baseline."""
    entries = [
        {"index": i, "seed": r["seed"], "sha256": r["sha256"], "reward": rw}
        for i, (r, rw) in enumerate(zip(rows, rewards, strict=True))
    ]
    return {
        "kept": [entries[i] for i in top_k(rewards, keep)],
        "random": entries[:keep],
        "candidates": entries,
    }


def _summary(
    store: Store, path: Path, cfg: SampleConfig, model: tuple[str, str], per_prompt: list[dict]
) -> dict:
    """What the selection says in brief: where it is, of which model, and the mean reward of the images
    kept, of the random baseline and of all candidates."""

    def mean_reward(which: str) -> float:
        return round(_mean([e["reward"] for p in per_prompt for e in p[which]]), 6)

    return {
        "file": str(path.relative_to(store.run_dir)),
        "model_id": model[0],
        "model_revision": model[1],
        "best_of": cfg.best_of,
        "keep": cfg.keep,
        "prompts": len(per_prompt),
        "mean_reward_kept": mean_reward("kept"),
        "mean_reward_random": mean_reward("random"),
        "mean_reward_all": mean_reward("candidates"),
    }


def write_selection(path: Path, selection: dict) -> None:
    """Write a selection atomically. Its JSON object holds:

    - ``format`` ("t2ialign.rejection_sampling/1"), ``t2ialign_version``
    - ``model_id``, ``model_revision``: the pipeline that made the candidates
    - ``reward``: ``path``, ``weights`` (hash of the MLP's weights), ``clip`` (model_id, path, fingerprint)
    - ``best_of``, ``keep``, ``generate`` (the resolved GenerateConfig of the candidates: seed, steps, ...)
    - ``summary``: what :func:`rejection_sample` returns (mean reward of kept / random / all candidates)
    - ``prompts``: one object per prompt, in the order given: ``prompt``; ``candidates``, every candidate in
      seed-index order; ``kept``, the top ``keep`` by reward, greatest first (equal rewards: lower index
      first); ``random``, the first ``keep`` candidates (the baseline). Each image is ``{index, seed,
      sha256, reward}``; the PNG is ``RUN/images/<sha256[:2]>/<sha256>.png``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        old = load_selection(path)
        if old["model_id"] != selection["model_id"]:
            raise ValueError(
                f"{path} holds the selection of model {old['model_id']!r}, not of {selection['model_id']!r}"
            )
    text = json.dumps(selection, indent=1, allow_nan=False)
    atomic_write(path, (text + "\n").encode("utf-8"))


def load_selection(path: str | Path) -> dict:
    """A selection file written by :func:`rejection_sample`, checked for its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no rejection-sampling selection at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or data.get("format") != SELECTION_FORMAT:
        raise ValueError(f"{path} is not a rejection-sampling selection ({SELECTION_FORMAT})")
    missing = [k for k in ("model_id", "best_of", "keep", "prompts") if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    return data


# --- command line -----------------------------------------------------------------------------------------


def _sample_config(args) -> SampleConfig:
    """The [generate] table with the sampler flags given, role eval, and the flags of rejection sampling."""
    from t2ialign.config import load_config

    gen = config_from_args(load_config(args.config).generate, args, "generate", role="eval")
    return config_from_args(SampleConfig(generate=gen), args, "sample")


def cmd_sample(args) -> int:
    from t2ialign.store import open_existing

    cfg = _sample_config(args)
    with open_existing(args.run, args.db_url) as store:
        prompts = choose_prompts(store, args.split, args.category, args.max_prompts, cfg.generate.seed)
        if dist.is_main():
            print(f"{len(prompts)} prompts x {cfg.best_of} candidates, keeping the best {cfg.keep} by reward")
        summary = rejection_sample(store, prompts, cfg, progress=dist.is_main())
    if dist.is_main():
        print(json.dumps(summary, indent=2))
        print(f"selection written to {Path(args.run) / summary['file']}")
    return 0


def add_command(sub) -> None:
    """Register ``sample`` on the top-level subparsers."""
    from t2ialign.world.prompts import SPLITS

    help = "stage 6: rejection sampling, the best k of n images per prompt by reward (Sec. 4.3)"
    sp = subcommand(sub, "sample", cmd_sample, help)
    add_config(sp, "[generate]: the sampler")
    sp.add_argument("--reward", help="reward model folder (default: RUN/reward)")
    sp.add_argument("--best-of", dest="best_of", type=int, default=16, help="n: candidates per prompt")
    sp.add_argument("--keep", type=int, default=4, help="k: images kept per prompt, greatest reward first")
    sp.add_argument(
        "--split",
        nargs="+",
        default=["seen"],
        choices=SPLITS,
        help="prompt split(s): seen, unseen_prompt, unseen_object",
    )
    sp.add_argument("--category", help="only this category (count, color, background, combination)")
    sp.add_argument(
        "--max-prompts", dest="max_prompts", type=int, help="a seeded sample of this many prompts per split"
    )
    add_sampler_args(
        sp,
        model_help="local diffusers Stable Diffusion folder, base or fine-tuned (default: the shipped world model)",
        seed_help="seed of the candidates' image seeds and of the prompt sample",
    )
