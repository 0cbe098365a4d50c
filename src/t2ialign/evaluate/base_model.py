"""``t2ialign evaluate-base``: how a base model fails, before any feedback (the paper's Table 1 view).

Samples images for up to ``prompts_per_category`` prompts of each category, separately for seen and for
unseen objects, and has the world judge grade them. The paper's Stable Diffusion v1.5 was judged good on
34% of count, 70% of color and 67% of background images (Table 1).
"""

from __future__ import annotations

from t2ialign.config import GenerateConfig
from t2ialign.evaluate.alignment import OBJECT_SPLITS, alignment_report
from t2ialign.generate.images import generate, select_prompts, stored_images
from t2ialign.label.oracle import judge_stored
from t2ialign.label.stats import PAPER_TABLE1
from t2ialign.store import Store
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import CATEGORIES, build_prompt_set

# the paper's Table 1 good shares as fractions (label.stats.PAPER_TABLE1 holds the table)
PAPER_TABLE1_GOOD = {c: round(PAPER_TABLE1[c]["good"] / 100, 3) for c in CATEGORIES}


def evaluate_base(
    store: Store, cfg: GenerateConfig, prompts_per_category: int = 100, progress: bool = True
) -> dict:
    """Generate (role eval) and judge; returns the report, also written to metrics.json."""
    from t2ialign.models.load import load_pipeline

    if not store.list_prompts():
        store.add_prompts(build_prompt_set())
    chosen: list[str] = []
    for category in CATEGORIES:
        for splits in OBJECT_SPLITS.values():
            rows = [p for s in splits for p in store.list_prompts(split=s, category=category)]
            chosen += [p["text"] for p in select_prompts(rows, prompts_per_category, seed=cfg.seed)]
    pipe, model_id, revision = load_pipeline(cfg.model)
    gen = generate(cfg, store, chosen, pipe=pipe, model_info=(model_id, revision), progress=progress)
    wanted = set(chosen)
    images = [
        r
        for r in stored_images(store, model_id, revision, gen["sampler"], role=cfg.role)
        if r["prompt"] in wanted
    ]
    report = alignment_report(judge_stored(store, images, Judge.load()))
    report.update(
        model_id=model_id, model_revision=revision, generate=gen, paper_table1_good=PAPER_TABLE1_GOOD
    )
    store.update_metrics(alignment=report["alignment"], base_eval=report)
    return report
