"""``run_loop``: the iterated loop, one round after another, each resumable stage by stage.

A round k (RUN/loop/NAME/round_k/):

1. generate: ``labels_per_round / images_per_prompt`` fresh feedback prompts (the next ones of a seeded,
   category-balanced order of the feedback prompts) x ``images_per_prompt`` images for D_human, and
   ``unlabeled_per_prompt`` for D_unlabel, from the current model (base in round 1, round k-1's
   fine-tuned pipeline after);
2. label: simulated labelers at once, or people through the web app (the round waits for its quota);
3. reward: r_phi trained again on every labeled image of rounds 1..k (-> round_k/reward);
4. finetune: Eq. 4 from the current model on D_model (this round's images, or all so far: loop.d_model),
   weighted by this round's reward (-> round_k/finetune/pipeline, the next round's current model);
5. evaluate: base and the round's model on the evaluation prompts, the same seeds, paired
   (-> round_k/evaluate.json).

After each round, metrics.json ``loop.NAME`` and the figure RUN/loop_NAME.png show alignment, FD_CLIP and
labels spent per round (round 0 = base).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from t2ialign.config import LoopConfig, to_dict
from t2ialign.core import figures
from t2ialign.core.fsutil import atomic_write, publish_dir
from t2ialign.evaluate.run import balanced_sample, evaluate_models, feedback_prompts
from t2ialign.finetune.train import finetune
from t2ialign.generate.images import generate, images_made
from t2ialign.label.simulate import simulate_labels
from t2ialign.loop.labels import label_counts, wait_for_labels
from t2ialign.loop.state import (
    STAGES,
    check_config,
    finish_stage,
    is_done,
    loop_dir,
    read_state,
    round_dir,
)
from t2ialign.models.load import load_clip, load_pipeline, resolve_clip_path, resolve_sd_path, revision
from t2ialign.reward.train import train_reward
from t2ialign.store import Store


@dataclass
class Round:
    """What the stages of round k read: the loop's config and store, the round's folder and state."""

    cfg: LoopConfig
    store: Store
    name: str
    k: int
    root: Path  # RUN/loop/NAME
    state: dict  # round_k/state.json: the stages finished, with what each made
    progress: bool
    judge: object | None

    @property
    def dir(self) -> Path:
        return round_dir(self.root, self.k)

    def earlier(self, j: int) -> dict:
        """The state of round j < k (finished)."""
        return read_state(round_dir(self.root, j))

    @property
    def current_model(self) -> str | None:
        """The model this round starts from: base (loop.model) in round 1, round k-1's pipeline after."""
        if self.k == 1:
            return self.cfg.model
        return self.earlier(self.k - 1)["stages"]["finetune"]["pipeline"]


def prompt_order(store: Store, cfg: LoopConfig) -> list[str]:
    """Every feedback prompt once, in a seeded order balanced over the categories: round k takes the k-th
    slice, so rounds label different prompts, and one round of 3B labels takes the prompts of three
    rounds of B (the same prompts in both arms of the 3-rounds-against-1 comparison)."""
    e = cfg.evaluate
    rows = feedback_prompts(store, e.n_seen, e.n_unseen, e.seed)
    return balanced_sample(rows, len(rows), f"loop:{cfg.seed}")


def round_prompts(order: list[str], cfg: LoopConfig, k: int) -> list[str]:
    n = cfg.labels_per_round // cfg.images_per_prompt
    if n > len(order):
        raise ValueError(
            f"a round wants {n} prompts (labels_per_round / images_per_prompt) but the run has only "
            f"{len(order)} feedback prompts: raise loop.images_per_prompt or lower loop.labels_per_round"
        )
    return [order[i % len(order)] for i in range((k - 1) * n, k * n)]  # cycles once every prompt is used


def stage_generate(r: Round) -> dict:
    order = prompt_order(r.store, r.cfg)
    prompts = round_prompts(order, r.cfg, r.k)
    model = r.current_model
    pipe, model_id, rev = load_pipeline(model)  # loaded once for both roles
    out = {"prompts": prompts, "model": model, "model_id": model_id, "model_revision": rev}
    for role, n in (("human", r.cfg.images_per_prompt), ("unlabeled", r.cfg.unlabeled_per_prompt)):
        shas: list[str] = []
        if n:
            gcfg = replace(r.cfg.generate, model=model, role=role, images_per_prompt=n)
            made = generate(gcfg, r.store, prompts, pipe, (model_id, rev), r.progress)
            shas = images_made(r.store, made, gcfg, prompts)
        out[role] = shas
    print(f"  {len(prompts)} prompts: {len(out['human'])} images to label, {len(out['unlabeled'])} unlabeled")
    return out


def stage_label(r: Round) -> dict:
    shas = r.state["stages"]["generate"]["human"]
    cfg = r.cfg
    if cfg.labelers == "simulated":
        simulate_labels(
            r.store, cfg.n_labelers, cfg.noise, cfg.skip, cfg.seed, r.judge, "human", r.progress, shas
        )
    else:
        where = f"loop {r.name}, round {r.k}"
        wait_for_labels(r.store, shas, cfg.n_labelers, cfg.poll_seconds, cfg.timeout_seconds, where)
    counts = label_counts(r.store, shas)
    print(f"  {counts['labeled_images']} of {counts['images']} images labeled, {counts['answers']} answers")
    return counts


def _labeled_so_far(r: Round) -> list[str]:
    """The images to label of rounds 1..k: every label the loop has collected."""
    rounds = [r.earlier(j) for j in range(1, r.k)] + [r.state]
    return sorted({s for st in rounds for s in st["stages"]["generate"]["human"]})


def stage_reward(r: Round) -> dict:
    clip_path, _ = resolve_clip_path(r.cfg.reward.clip)
    clip = load_clip(r.cfg.reward.clip)
    shas = _labeled_so_far(r)
    model, rep = train_reward(r.store, r.cfg.reward, *clip, str(clip_path), r.progress, images=shas)
    tmp = r.dir / "reward.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    publish_dir(tmp, r.dir / "reward")  # whole or absent: the next stage never reads half a model
    print(f"  reward on {rep['n_train']} labeled images (+{rep['n_val']} held out) of rounds 1-{r.k}")
    return {"path": str(r.dir / "reward"), "n_train": rep["n_train"], "n_val": rep["n_val"]}


def d_model_images(r: Round) -> list[str]:
    """D_model of this round: its own images (d_model "round") or every image of the loop so far."""
    rounds = [r.state] if r.cfg.d_model == "round" else [r.earlier(j) for j in range(1, r.k)] + [r.state]
    return sorted(
        {s for st in rounds for role in ("human", "unlabeled") for s in st["stages"]["generate"][role]}
    )


def stage_finetune(r: Round) -> dict:
    out = r.dir / "finetune"
    reward = r.state["stages"]["reward"]["path"]
    ft = replace(r.cfg.finetune, pretrained_model_name_or_path=r.current_model, reward=reward)
    resume = "latest" if (out / "checkpoints").exists() else None  # a killed run continues its checkpoint
    rep = finetune(
        ft,
        r.store,
        name=f"loop/{r.name}/round_{r.k}",
        resume_from_checkpoint=resume,
        progress=r.progress,
        out=out,
        images=d_model_images(r),
    )
    print(f"  {rep['steps']} steps on {rep['n_model']} images -> {out / 'pipeline'}")
    keep = ("steps", "steps_this_call", "n_model", "n_pretrain", "mean_weight", "final_loss")
    return {"pipeline": str(out / "pipeline")} | {k: rep.get(k) for k in keep}


def stage_evaluate(r: Round) -> dict:
    name = f"round_{r.k}"
    ecfg = replace(r.cfg.evaluate, reward=r.state["stages"]["reward"]["path"])
    models = {
        "base": {"kind": "pipeline", "path": r.cfg.model},
        name: {"kind": "pipeline", "path": r.state["stages"]["finetune"]["pipeline"]},
    }
    ev = evaluate_models(r.store, models, ecfg, r.progress, r.judge, record=False)
    atomic_write(r.dir / "evaluate.json", (json.dumps(ev, indent=1) + "\n").encode())
    m, b = ev["models"][name], ev["models"]["base"]
    paired_all = ev["paired"][name]["all"]["all"]
    print(f"  alignment - base: {100 * (paired_all['delta'] or 0):+.1f} points; FD_CLIP {m['fd_clip']:.4f}")
    return {
        "paired": ev["paired"][name],
        "alignment": m["alignment"],
        "fd_clip": m["fd_clip"],
        "mean_reward": m["mean_reward"],
        "base": {"alignment": b["alignment"], "fd_clip": b["fd_clip"], "mean_reward": b["mean_reward"]},
    }


STAGE_FUNCS = {
    "generate": stage_generate,
    "label": stage_label,
    "reward": stage_reward,
    "finetune": stage_finetune,
    "evaluate": stage_evaluate,
}


def run_round(r: Round) -> None:
    """The round's unfinished stages, in order; each is recorded in state.json once it has finished."""
    for stage in STAGES:
        if stage in r.state["stages"]:
            continue
        print(f"\n== loop {r.name}, round {r.k}/{r.cfg.rounds}: {stage}", flush=True)
        t0 = time.time()
        info = STAGE_FUNCS[stage](r)
        finish_stage(r.dir, r.state, stage, info | {"seconds": round(time.time() - t0, 1)})


def run_loop(cfg: LoopConfig, store: Store, name: str = "default", progress: bool = True, judge=None) -> dict:
    """Run (or continue) the loop NAME of the run to ``cfg.rounds`` rounds; returns ``loop.NAME`` as
    written to metrics.json. ``judge`` (the world judge by default) labels and evaluates.

    A rerun continues at the next unfinished stage (a fine-tuning run from its last checkpoint); it
    refuses a config that differs from the one the loop started with (``rounds`` may grow)."""
    root = loop_dir(store.run_dir, name)
    folder, _ = resolve_sd_path(cfg.model)
    check_config(root, cfg, revision(folder))
    for k in range(1, cfg.rounds + 1):
        rdir = round_dir(root, k)
        r = Round(cfg, store, name, k, root, read_state(rdir), progress, judge)
        if not is_done(r.state):
            run_round(r)
        record(store, cfg, name)
    return record(store, cfg, name)


def round_entries(root: Path, cfg: LoopConfig) -> list[dict]:
    """metrics.json's ``loop.NAME.rounds``: round 0 (base, as round 1 evaluated it), then each finished
    round with its labels, model, paired differences from base, FD_CLIP, mean reward and time."""
    out: list[dict] = []
    total = answers = 0
    for k in range(1, cfg.rounds + 1):
        st = read_state(round_dir(root, k))
        if not is_done(st):
            break
        s = st["stages"]
        ev = s["evaluate"]
        if k == 1:
            base = ev["base"]
            out.append(
                dict(round=0, labels_round=0, labels_total=0, answers_round=0, answers_total=0)
                | {"model": cfg.model or "base", "evaluate": None, "wall_s": None}
                | base
            )
        total += s["label"]["labeled_images"]
        answers += s["label"]["answers"]
        out.append(
            {
                "round": k,
                "labels_round": s["label"]["labeled_images"],
                "labels_total": total,
                "answers_round": s["label"]["answers"],
                "answers_total": answers,
                "model": s["finetune"]["pipeline"],
                "reward": s["reward"]["path"],
                "evaluate": ev["paired"],
                "alignment": ev["alignment"],
                "fd_clip": ev["fd_clip"],
                "mean_reward": ev["mean_reward"],
                "wall_s": round(sum(s[stage]["seconds"] for stage in STAGES), 1),
            }
        )
    return out


def record(store: Store, cfg: LoopConfig, name: str) -> dict:
    """Write ``loop.NAME`` to metrics.json and its curve to RUN/loop_NAME.png; returns the section."""
    root = loop_dir(store.run_dir, name)
    section = {"config": to_dict(cfg), "dir": str(root), "rounds": round_entries(root, cfg)}
    fig = figures.loop_curve(section["rounds"], title=f"loop {name}")
    if fig is not None:
        section["figure"] = str(figures.write_png(fig, store.run_dir / f"loop_{name}.png"))
    loops = store.read_metrics().get("loop", {})
    store.update_metrics(loop={**(loops if isinstance(loops, dict) else {}), name: section})
    return section
