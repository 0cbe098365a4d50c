"""The HTML report (``t2ialign report``): self-contained, escaped, honest about missing sections, claims
computed from the numbers; and it renders in a real browser (headless Chromium, as test_labeling_browser)."""

import copy
import io
import json
import math
import re

import pytest

from t2ialign.evaluate.claims import ablation_of, accuracy_z, gain_verdict, keep_verdict
from t2ialign.label.stats import PAPER_TABLE1
from t2ialign.report import html as rp
from t2ialign.report.html import claims, render_report, write_report
from t2ialign.store import Store
from t2ialign.world.prompts import Prompt, PromptSpec, build_prompt_set
from t2ialign.world.render import render

HTML_PROMPT = '<img src=x onerror="window.__xss=1">Two circles & <b>friends</b>'
MISSING_SHA = "f" * 64


def png_of(text, seed) -> bytes:
    buf = io.BytesIO()
    render(text, seed).pil().save(buf, format="PNG")
    return buf.getvalue()


def summary(alignment, n=80):
    lo, hi = max(0.0, alignment - 0.1), min(1.0, alignment + 0.1)
    good = round(alignment * n)
    return {
        "n": n,
        "good": good,
        "bad": n - good,
        "skip": 0,
        "alignment": alignment,
        "ci95": [round(lo, 4), round(hi, 4)],
        "skip_rate": 0.0,
        "attribute_accuracy": {},
    }


def alignment_block(by_cat: dict[str, float]) -> dict:
    """{group or all: {category or all: summary}} with the same numbers in every group."""
    cats = {c: summary(a) for c, a in by_cat.items()}
    cats["all"] = summary(sum(by_cat.values()) / len(by_cat), n=320)
    return {g: copy.deepcopy(cats) for g in ("seen", "unseen_prompt", "unseen_object", "all")}


def paired_block(by_cat: dict[str, float], base_cats: dict[str, float], half=0.015) -> dict:
    """evaluate.paired.<model>: {group: {category: stat}}, model - base of the hand-made shares with a
    95% interval of +-half, the same in every group."""

    def stat(d, n_prompts):
        return {
            "delta": round(d, 4),
            "ci95": [round(d - half, 4), round(d + half, 4)],
            "n_prompts": n_prompts,
        }

    cats = {c: stat(by_cat[c] - base_cats[c], 15) | {"n_images": 300} for c in by_cat}
    mean = sum(by_cat.values()) / len(by_cat) - sum(base_cats.values()) / len(base_cats)
    cats["all"] = stat(mean, 60) | {"n_images": 1200}
    return {g: copy.deepcopy(cats) for g in ("seen", "unseen_prompt", "unseen_object", "all")}


def reward_block(delta, half=0.01) -> dict:
    """evaluate.paired_reward.<model>: {group: stat}."""
    stat = {"delta": delta, "ci95": [delta - half, delta + half], "n_prompts": 120, "n_images": 2400}
    return {g: dict(stat) for g in ("seen", "unseen_prompt", "unseen_object", "all")}


def model_entry(kind, path, by_cat, fd, reward):
    return {
        "kind": kind,
        "path": path,
        "model_id": "world-sd",
        "model_revision": "abc123",
        "n_images": 480,
        "alignment": alignment_block(by_cat),
        "mean_reward": reward,
        "mean_reward_by_group": {"seen": reward, "unseen_prompt": reward, "unseen_object": reward},
        "clip_score": 0.31,
        "fd_clip": fd,
        "fid_inception": None,
        "seconds": 12.0,
    }


def make_metrics(run_dir) -> dict:
    """Realistic hand-made sections: the fine-tuned model gains 30 count points on every group, keeps color
    and background within 1 point, costs 10% FD; rejection gains 12 points overall."""
    ft = str(run_dir / "finetune" / "{}" / "pipeline")
    base_cats = {"count": 0.30, "color": 0.70, "background": 0.65, "combination": 0.10}
    tuned_cats = {"count": 0.60, "color": 0.69, "background": 0.66, "combination": 0.30}
    rej_cats = {"count": 0.45, "color": 0.85, "background": 0.80, "combination": 0.20}
    scorer = {
        s: {"mean": m, "std": 0.01, "per_seed": [m - 0.01, m, m + 0.01]}
        for s, m in zip(rp.EVAL_SETS, (0.85, 0.80, 0.78), strict=True)
    }
    return {
        "table1": {
            "paper": PAPER_TABLE1,
            "run": {
                "count": {"good": 30.0, "bad": 65.0, "skip": 5.0, "n": 600},
                "color": {"good": 72.0, "bad": 22.0, "skip": 6.0, "n": 300},
                "background": {"good": 60.0, "bad": 38.0, "skip": 2.0, "n": 240},
                "combination": {"good": 20.0, "bad": 75.0, "skip": 5.0, "n": 1500},
                "total": {"good": 33.0, "bad": 62.0, "skip": 5.0, "n": 2640},
            },
        },
        "label_simulate": {"fleiss_kappa": 0.6123, "settings": {"n_labelers": 3, "noise": 0.05}},
        "reward_eval": {
            "n_pairs": {"seen_prompts": 5000, "unseen_prompts": 3000, "unseen_objects": 2000},
            "seeds": [0, 1, 2],
            "scorers": {
                "reward": scorer,
                "reward_no_pc": {k: v | {"mean": v["mean"] - 0.05} for k, v in scorer.items()},
                "reward_half_data": {k: v | {"mean": v["mean"] - 0.03} for k, v in scorer.items()},
                "clip_score": {k: {"mean": 0.6, "std": 0.0, "per_seed": []} for k in rp.EVAL_SETS},
            },
        },
        "evaluate": {
            "config": {"n_seen": 60, "n_unseen": 60, "images_per_prompt": 4, "best_of": 16},
            "prompts": {"seen": ["a"], "unseen_prompt": ["b"], "unseen_object": ["c"]},
            "reward_model": str(run_dir / "reward"),
            "models": {
                "base": model_entry("pipeline", None, base_cats, 0.50, 0.40),
                "finetuned:human_only": model_entry(
                    "pipeline", ft.format("human_only"), tuned_cats, 0.90, 0.70
                ),
                "finetuned:no_pretrain": model_entry(
                    "pipeline", ft.format("no_pretrain"), tuned_cats, 0.70, 0.75
                ),
                "finetuned:full": model_entry("pipeline", ft.format("full"), tuned_cats, 0.55, 0.76)
                | {"guidance_scale": 3.5},
                "rejection": model_entry("rejection", None, rej_cats, 0.50, 0.60)
                | {"selection": "best 20 of 80 by reward"},
            },
            "paired_reference": "base",
            "paired": {
                "finetuned:human_only": paired_block(tuned_cats, base_cats),
                "finetuned:no_pretrain": paired_block(tuned_cats, base_cats),
                "finetuned:full": paired_block(tuned_cats, base_cats),
                "rejection": paired_block(rej_cats, base_cats),
            },
            "paired_attribute": {
                "finetuned:full": {
                    g: {"count": {"delta": 0.3, "ci95": [0.2, 0.4], "n_prompts": 30, "n_images": 600}}
                    for g in ("seen", "all")
                }
            },
            "paired_reward": {
                "finetuned:human_only": reward_block(0.30),
                "finetuned:no_pretrain": reward_block(0.35),
                "finetuned:full": reward_block(0.36),
                "rejection": reward_block(0.20),
            },
        },
        "finetune": {
            "human_only": {
                "name": "human_only",
                "weights": "labels",
                "n_model": 900,
                "n_pretrain": 0,
                "steps": 400,
            },
            "no_pretrain": {
                "name": "no_pretrain",
                "weights": "reward",
                "n_model": 1800,
                "n_pretrain": 0,
                "steps": 400,
            },
            "full": {"name": "full", "weights": "reward", "n_model": 1800, "n_pretrain": 4000, "steps": 400},
        },
        "rejection_sampling": {
            "world-sd_best16_keep4": {
                "file": "samples/world-sd_best16_keep4.json",
                "model_id": "world-sd",
                "best_of": 16,
                "keep": 4,
                "prompts": 120,
                "mean_reward_kept": 0.71,
                "mean_reward_random": 0.42,
                "mean_reward_all": 0.43,
            }
        },
    }


def tally(first, second, align=(0.5, 0.03), fid=(0.10, 0.15)):
    def one(shares):
        hist = [0, 1, 2, 3, 4, 10, 20, 30, 20, 10]
        return {
            "queries": 100,
            "incomplete": 0,
            "histogram": hist,
            "percent": [float(h) for h in hist],
            "threshold": 7,
            "share_ge_threshold": shares[0],
            "share_second_ge_threshold": shares[1],
            "tie_share": 0.2,
            "vote_share": {"first": 0.5, "second": 0.3, "tie": 0.2},
        }

    return {
        "comparison": {
            "name": f"{first}-vs-{second}",
            "first_model": first,
            "second_model": second,
            "raters_per_query": 9,
            "seed": 0,
            "queries": 100,
        },
        "alignment": one(align),
        "fidelity": one(fid),
        "by_split": {"seen": {"alignment": one(align), "fidelity": one(fid)}},
    }


def real_tally(first, second):
    """A tally in the exact format of label.sidebyside: >= 7 of 9 votes for the first model on 2 of 10
    queries, for the second on 4."""
    from t2ialign.label.sidebyside import tally_votes

    votes = {i: ["first"] * 9 for i in range(2)}
    votes |= {i: ["second"] * 9 for i in range(2, 6)}
    votes |= {i: ["first"] * 4 + ["second"] * 4 + ["tie"] for i in range(6, 10)}
    t = tally_votes(votes, 9)
    comparison = {"name": "x", "first_model": first, "second_model": second, "raters_per_query": 9, "seed": 0}
    return {"comparison": comparison | {"queries": 10}, "alignment": t, "fidelity": t, "by_split": {}}


@pytest.fixture
def run(tmp_path):
    """A run with the prompt set, a few images, metrics and evaluate/images.json (no side_by_side, no
    timings); returns (run_dir, expected number of grid images)."""
    run_dir = tmp_path / "run"
    prompts = build_prompt_set()
    html_prompt = Prompt(HTML_PROMPT, "count", "seen", PromptSpec("circle", count=2))
    by = {}
    for p in prompts:
        by.setdefault((p.split, p.category), []).append(p.text)
    groups = {
        "seen": [HTML_PROMPT, *by[("seen", "count")][:3], by[("seen", "color")][0]],  # 4 count: 2 shown
        "unseen_prompt": [by[("unseen_prompt", "background")][0]],
        "unseen_object": [by[("unseen_object", "combination")][0]],
    }
    with Store.open(run_dir) as store:
        store.add_prompts([*prompts, html_prompt])
        images = {}
        for m, offset in (("base", 0), ("finetuned:full", 10), ("rejection", 20)):
            images[m] = {}
            for ps in groups.values():
                for t in ps:
                    text = "two circles" if t == HTML_PROMPT else t
                    images[m][t] = [store.put_image_bytes(png_of(text, offset + s)) for s in range(2)]
        images["rejection"][groups["seen"][-1]][1] = MISSING_SHA  # a file that is not there
        store.update_metrics(**make_metrics(run_dir))
        (run_dir / "evaluate").mkdir()
        (run_dir / "evaluate" / "images.json").write_text(json.dumps({"prompts": groups, "images": images}))
    shown = 2 + 1 + 1 + 1  # seen: 2 count (the HTML one first) + 1 color; one per unseen group
    return run_dir, shown * 3 * 2 - 1


def write(run_dir):
    with Store.open(run_dir) as store:
        return write_report(store)


def test_report_is_self_contained_escaped_and_complete(run):
    run_dir, n_grid = run
    path = write(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    links = attributes(page, ("src", "href"))
    assert links and all(v.startswith(("data:image/png;base64,", "#")) for _, _, v in links)
    assert not [t for t, _, _ in attributes(page, ()) if t in ("script", "link", "iframe", "object")]
    n_figures = 1 + 4 + 1  # Fig. 4, alignment per group (3 groups + all), the paired forest plot
    assert page.count('class="figure"') == n_figures
    assert page.count('class="px"') == n_grid
    assert page.count("data:image/png;base64,") == n_figures + n_grid
    assert page.count('class="missing"') == 1
    # the prompt with HTML in it appears escaped only, in the grids and in the metrics dump
    assert HTML_PROMPT not in page
    assert html_escaped(HTML_PROMPT) in page
    assert "window.__xss" in page  # as text
    # sections in order; missing ones say what to run, measured ones show numbers
    ids = re.findall(r'<section id="(\w+)">', page)
    assert ids == [
        "run",
        "table1",
        "fig4",
        "evaluate",
        "table2",
        "fig3",
        "rejection",
        "grids",
        "loop",
        "rl",
        "methods",
        "claims",
        "metrics",
    ]
    fig3 = section(page, "fig3")
    assert "not measured in this run" in fig3 and "t2ialign label compare" in fig3
    assert "not measured in this run" in section(page, "run")  # timings
    assert "not measured" not in section(page, "table1")
    assert "0.612" in section(page, "table1")  # Fleiss' kappa
    assert "34.4" in section(page, "table1") and "72.0" in section(page, "table1")
    t2 = section(page, "table2")
    assert "FT w/o unlabeled &amp; pre-train" in t2 and "26.59" in t2 and "16.76" in t2
    assert "could not render" not in page
    assert "t2ialign" in section(page, "run") and "0.1.0" in section(page, "run")
    ev = section(page, "evaluate")
    assert "Paired difference from base" in ev and "forest plot" in ev
    assert "<b>+30.0 [+28.5, +31.5] 15/300</b>" in ev  # count, fine-tuned: the interval excludes zero
    assert "−1.0 [−2.5, +0.5]" in ev.replace("-", "−")  # color: it does not, so not bold
    assert "<b>−1.0" not in ev.replace("-", "−")
    assert "Per attribute" in ev and "<b>+30.0 [+20.0, +40.0] 30/600</b>" in ev
    assert "lies above zero" in section(page, "claims")
    # the guidance scale each model was sampled at: finetuned:full at its own, the others at the default
    assert "<th>guidance</th>" in ev and "<td>3.5</td>" in ev


def attributes(page, names):
    """(tag, attribute, value) of every attribute in ``names`` of every tag (every tag with names=())."""
    from html.parser import HTMLParser

    found = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if not names:
                found.append((tag, None, None))
            found.extend((tag, k, v or "") for k, v in attrs if k in names)

    P().feed(page)
    return found


def html_escaped(s):
    import html

    return html.escape(s, quote=True)


def section(page, sid):
    start = page.index(f'<section id="{sid}">')
    return page[start : page.index("</section>", start)]


def test_missing_everything_says_not_measured(tmp_path):
    with Store.open(tmp_path / "run") as store:
        path = write_report(store, tmp_path / "out" / "r.html")
    page = path.read_text()
    for sid in ("table1", "fig4", "evaluate", "table2", "fig3", "rejection", "grids"):
        assert "not measured in this run (run <code>t2ialign" in section(page, sid), sid
    assert "data:image/png" not in page
    assert all(c["verdict"] == "not measured" for c in claims({}))


def test_claims_verdicts_from_hand_made_numbers(tmp_path):
    metrics = make_metrics(tmp_path)
    by_id = {c["id"]: c for c in claims(metrics)}
    assert set(c["verdict"] for c in by_id.values()) <= {"reproduced", "not reproduced", "not measured"}
    assert "z = +" in by_id["fig4_reward_half_data_seen_prompts"]["measured"]
    # count 30 < color 72 and background 60
    assert by_id["table1_counts_are_hard"]["verdict"] == "reproduced"
    assert by_id["fig4_clip_score_seen_prompts"]["verdict"] == "reproduced"
    assert by_id["fig4_reward_no_pc_unseen_objects"]["verdict"] == "reproduced"
    assert by_id["fig4_reward_half_data_seen_prompts"]["verdict"] == "reproduced"
    # the model named "finetuned:full" stands for "finetuned": +30 points of count everywhere
    for g in ("seen", "unseen_prompt", "unseen_object"):
        assert by_id[f"finetune_count_{g}"]["verdict"] == "reproduced", g
    assert "+30.0 points" in by_id["finetune_count_seen"]["measured"]
    assert by_id["finetune_keeps_color_background"]["verdict"] == "reproduced"  # -1 and +1 point
    assert by_id["rejection_sampling_alignment"]["verdict"] == "reproduced"  # +12.5 points
    assert by_id["finetune_fidelity_cost"]["verdict"] == "reproduced"  # 0.55 / 0.50 = +10%
    assert by_id["table2_fidelity_order"]["verdict"] == "reproduced"  # 0.90 > 0.70 > 0.55
    assert by_id["table2_reward"]["verdict"] == "reproduced"
    assert by_id["fig3a_alignment"]["verdict"] == "not measured"

    # now break some: unseen-prompt count gain of 10 points (< 15, though significant), color -5 points
    # (its interval wholly below -3), FD +30%, reward below CLIP score on unseen objects, human-only not worst
    models = metrics["evaluate"]["models"]
    paired = metrics["evaluate"]["paired"]["finetuned:full"]
    models["finetuned:full"]["alignment"]["unseen_prompt"]["count"]["alignment"] = 0.40
    paired["unseen_prompt"]["count"] |= {"delta": 0.10, "ci95": [0.05, 0.15]}
    models["finetuned:full"]["alignment"]["all"]["color"]["alignment"] = 0.65
    paired["all"]["color"] |= {"delta": -0.05, "ci95": [-0.065, -0.035]}
    models["finetuned:full"]["fd_clip"] = 0.65
    models["finetuned:human_only"]["fd_clip"] = 0.60
    metrics["reward_eval"]["scorers"]["clip_score"]["unseen_objects"]["mean"] = 0.9
    metrics["table1"]["run"]["count"]["good"] = 65.0
    by_id = {c["id"]: c for c in claims(metrics)}
    assert by_id["finetune_count_seen"]["verdict"] == "reproduced"
    assert by_id["finetune_count_unseen_prompt"]["verdict"] == "not reproduced"
    assert by_id["finetune_keeps_color_background"]["verdict"] == "not reproduced"
    assert by_id["finetune_fidelity_cost"]["verdict"] == "not reproduced"
    assert by_id["table2_fidelity_order"]["verdict"] == "not reproduced"
    assert by_id["fig4_clip_score_unseen_objects"]["verdict"] == "not reproduced"
    assert by_id["fig4_clip_score_seen_prompts"]["verdict"] == "reproduced"
    assert by_id["table1_counts_are_hard"]["verdict"] == "not reproduced"

    # exactly at the thresholds counts as met (numbers are rounded decimals)
    paired["unseen_prompt"]["count"] |= {"delta": 0.15, "ci95": [0.10, 0.20]}
    paired["all"]["color"] |= {"delta": -0.02, "ci95": [-0.03, -0.01]}
    models["finetuned:full"]["fd_clip"] = 0.60
    by_id = {c["id"]: c for c in claims(metrics)}
    assert by_id["finetune_count_unseen_prompt"]["verdict"] == "reproduced"
    assert by_id["finetune_keeps_color_background"]["verdict"] == "reproduced"
    assert by_id["finetune_fidelity_cost"]["verdict"] == "reproduced"


def test_a_gain_whose_paired_interval_contains_zero_is_within_noise(tmp_path):
    metrics = make_metrics(tmp_path)
    ev = metrics["evaluate"]
    # +30 points of count, above the 25-point target, but the interval reaches below zero
    ev["paired"]["finetuned:full"]["seen"]["count"] |= {"delta": 0.30, "ci95": [-0.01, 0.61]}
    # rejection: +14 points over 120 prompts, interval [0, +28]: zero is not excluded
    ev["paired"]["rejection"]["all"]["all"] |= {"ci95": [0.0, 0.28]}
    # color's interval straddles -3 points; one fine-tuned model's reward gain is within its noise
    ev["paired"]["finetuned:full"]["all"]["color"] |= {"delta": -0.01, "ci95": [-0.05, 0.03]}
    ev["paired_reward"]["finetuned:human_only"]["all"] |= {"delta": 0.01, "ci95": [-0.01, 0.03]}
    by_id = {c["id"]: c for c in claims(metrics)}
    for cid in (
        "finetune_count_seen",
        "rejection_sampling_alignment",
        "finetune_keeps_color_background",
        "table2_reward",
    ):
        assert by_id[cid]["verdict"] == "within noise", cid
    assert by_id["finetune_count_unseen_prompt"]["verdict"] == "reproduced"  # its interval is [28.5, 31.5]
    assert (
        "+30.0 points, 95% CI [-1.0, +61.0], 15 prompts / 300 image pairs"
        in by_id["finetune_count_seen"]["measured"]
    )
    assert by_id["rejection_sampling_alignment"]["measured"].startswith(
        "best 20 of 80 by reward: rejection − base"
    )
    assert "finetuned:human_only 0.700 (+0.010, 95% CI [-0.010, +0.030]" in by_id["table2_reward"]["measured"]
    # an interval wholly below zero is a loss: not reproduced
    ev["paired"]["finetuned:full"]["seen"]["count"] |= {"delta": -0.10, "ci95": [-0.2, -0.01]}
    ev["paired_reward"]["finetuned:human_only"]["all"] |= {"delta": -0.05, "ci95": [-0.08, -0.02]}
    by_id = {c["id"]: c for c in claims(metrics)}
    assert by_id["finetune_count_seen"]["verdict"] == "not reproduced"
    assert by_id["table2_reward"]["verdict"] == "not reproduced"
    page = render_report(metrics, tmp_path)
    assert 'class="v within-noise"' in section(page, "claims")

    # without paired differences (an evaluation from before them) the gain claims are not measured
    del ev["paired"], ev["paired_reward"]
    by_id = {c["id"]: c for c in claims(metrics)}
    for cid in ("finetune_count_seen", "finetune_keeps_color_background", "rejection_sampling_alignment"):
        assert by_id[cid]["verdict"] == "not measured", cid
        assert "no paired interval" in by_id[cid]["measured"]
    assert by_id["table2_reward"]["verdict"] == "not measured"
    assert "predates" in section(render_report(metrics, tmp_path), "evaluate")


def test_gain_and_keep_verdicts_by_hand():
    def stat(d, lo, hi):
        return {"delta": d, "ci95": [lo, hi]}

    assert gain_verdict(stat(0.1, 0.01, 0.2)) is True
    assert gain_verdict(stat(0.1, 0.0, 0.2)) == "within noise"  # zero is not excluded
    assert gain_verdict(stat(-0.1, -0.2, -0.01)) is False
    assert gain_verdict(stat(0.1, 0.01, 0.2), target=0.15) is False  # significant, under the target
    assert gain_verdict(stat(0.15, 0.1, 0.2), target=0.15) is True
    assert keep_verdict(stat(0.0, -0.03, 0.03), 0.03) is True
    assert keep_verdict(stat(0.0, -0.05, 0.03), 0.03) == "within noise"
    assert keep_verdict(stat(-0.06, -0.08, -0.04), 0.03) is False


def test_fig4_differences_under_their_noise_are_within_noise(tmp_path):
    # hand-computed: 0.80 vs 0.75 on 100 pairs: se = sqrt((0.16 + 0.1875) / 100) = 0.05895, z = 0.848
    assert accuracy_z(0.80, 0.75, 100) == pytest.approx(0.05 / math.sqrt(0.3475 / 100))
    assert accuracy_z(0.5, 0.5, 10) == 0.0
    assert accuracy_z(1.0, 0.0, 10) == math.inf
    metrics = make_metrics(tmp_path)
    # the same means on 200 pairs: no PC loss is 5 points worse (z = 1.3, not significant),
    # CLIP score 25 points worse (z = 5.8, significant)
    metrics["reward_eval"]["n_pairs"]["seen_prompts"] = 200
    by_id = {c["id"]: c for c in claims(metrics)}
    assert by_id["fig4_reward_no_pc_seen_prompts"]["verdict"] == "within noise"
    assert by_id["fig4_clip_score_seen_prompts"]["verdict"] == "reproduced"
    assert by_id["fig4_reward_no_pc_unseen_prompts"]["verdict"] == "reproduced"  # 3000 pairs
    # a reward significantly below CLIP score is not reproduced, one barely below is within noise
    metrics["reward_eval"]["scorers"]["clip_score"]["seen_prompts"]["mean"] = 0.95
    assert {c["id"]: c for c in claims(metrics)}["fig4_clip_score_seen_prompts"][
        "verdict"
    ] == "not reproduced"
    metrics["reward_eval"]["scorers"]["clip_score"]["seen_prompts"]["mean"] = 0.86
    assert {c["id"]: c for c in claims(metrics)}["fig4_clip_score_seen_prompts"]["verdict"] == "within noise"
    page = render_report(metrics, tmp_path)
    assert 'class="v within-noise"' in section(page, "claims")


def test_a_model_named_finetuned_wins_and_missing_base_is_not_measured(tmp_path):
    metrics = make_metrics(tmp_path)
    models = metrics["evaluate"]["models"]
    models["finetuned"] = copy.deepcopy(models["base"]) | {
        "path": str(tmp_path / "finetune" / "default" / "pipeline")
    }
    metrics["evaluate"]["paired"]["finetuned"] = paired_block(
        {c: 0.5 for c in ("count", "color")}, {c: 0.5 for c in ("count", "color")}, half=0.05
    )
    by_id = {c["id"]: c for c in claims(metrics)}
    assert by_id["finetune_count_seen"]["verdict"] == "within noise"  # same numbers as base
    assert "finetuned − base +0.0 points" in by_id["finetune_count_seen"]["measured"]
    del models["base"]
    by_id = {c["id"]: c for c in claims(metrics)}
    for cid in (
        "finetune_count_seen",
        "rejection_sampling_alignment",
        "finetune_fidelity_cost",
        "table2_reward",
    ):
        assert by_id[cid]["verdict"] == "not measured", cid
        assert by_id[cid]["measured"] == "—"


def test_rejection_on_a_finetuned_model_is_not_an_ablation(tmp_path):
    metrics = make_metrics(tmp_path)
    models = metrics["evaluate"]["models"]
    models["rejection:finetuned:full"] = copy.deepcopy(models["rejection"]) | {
        "path": models["finetuned:full"]["path"]
    }
    roles = rp.model_roles(metrics)
    assert roles["rejection"] == "rejection" and roles["finetuned"] == "finetuned:full"
    assert "rejection:finetuned:full" not in roles["tuned"]
    assert roles["ablations"] == {
        "human_only": "finetuned:human_only",
        "no_pretrain": "finetuned:no_pretrain",
        "full": "finetuned:full",
    }


def test_ablations_from_finetune_reports_and_names():
    assert ablation_of("x", {"n_pretrain": 4000}) == "full"
    assert ablation_of("x", {"n_pretrain": 0, "weights": "labels"}) == "human_only"
    assert ablation_of("x", {"n_pretrain": 0, "use_unlabeled": True}) == "no_pretrain"
    assert ablation_of("x", {"n_pretrain": 0, "config": {"use_unlabeled": False}}) == "human_only"
    assert ablation_of("x", {"n_pretrain": 0, "weights": "reward"}) is None  # not knowable
    assert ablation_of("human_only", None) == "human_only"
    assert ablation_of("no-pretrain", {"n_pretrain": 0}) == "no_pretrain"
    assert ablation_of("full", None) == "full"
    assert ablation_of("full", {"n_pretrain": 4000, "weights": "uniform"}) is None  # a control, no column
    assert ablation_of("full", {"n_pretrain": 4000, "weights": "reward", "top_k_per_prompt": 4}) is None


def test_table2_names_every_fine_tuned_run_by_its_column():
    """Two runs of one column both show it (the first is the claims' representative); controls say so."""
    full = {"weights": "reward", "use_unlabeled": True, "n_pretrain": 4000, "n_model": 40, "steps": 8}
    finetune = {
        "full": full,
        "full_slow": full | {"learning_rate": 1e-5, "use_ema": True},
        "ctrl": full | {"weights": "uniform"},
        "best": full | {"top_k_per_prompt": 4},
        "odd": {"n_pretrain": 0, "weights": "reward"},
        "oracle": full | {"weights": "labels", "pretrain_data": "/x/oracle_renders"},
    }
    models = {"base": {"fd_clip": 0.07}} | {f"finetuned:{n}": {"fd_clip": 0.1} for n in finetune}
    page = rp._section_table2({"evaluate": {"models": models}, "finetune": finetune})
    rows = {
        r.split("<td>")[1].split("</td>")[0]: r for r in page.split("<tr>") if r.startswith("<td>finetuned:")
    }
    assert rows.keys() == {f"finetuned:{n}" for n in finetune}
    assert "FT (full)" in rows["finetuned:full"] and "FT (full)" in rows["finetuned:full_slow"]
    assert "lr 1e-05 with EMA" in rows["finetuned:full_slow"] and " lr " not in rows["finetuned:full"]
    assert "none (a control: uniform weights)" in rows["finetuned:ctrl"]
    assert (
        "none (best 4 per prompt)" in rows["finetuned:best"]
        and "best 4 per prompt," in rows["finetuned:best"]
    )
    assert "ablation unknown" in rows["finetuned:odd"]
    assert "none (the labels as weights, with D_pre)" in rows["finetuned:oracle"]
    assert (
        "D_pre from oracle_renders" in rows["finetuned:oracle"] and "D_pre from" not in rows["finetuned:full"]
    )


def test_fig3_claims_and_section(tmp_path):
    metrics = make_metrics(tmp_path)
    metrics["side_by_side"] = {
        "ft-vs-orig": tally("fine-tuned", "original", align=(0.5, 0.03), fid=(0.10, 0.15)),
        # given the other way round: the model under test is second
        "orig-vs-rs": tally("original", "rejection sampling", align=(0.02, 0.46), fid=(0.05, 0.05)),
        "ft-vs-rs": real_tally("fine-tuned", "original+rejection"),
        "odd": {"comparison": {"first_model": "x"}, "alignment": {"histogram": [1, 2, 3]}},
    }
    by_id = {c["id"]: c for c in claims(metrics)}
    assert by_id["fig3a_alignment"]["verdict"] == "reproduced"
    assert by_id["fig3a_fidelity"]["verdict"] == "reproduced"  # original favored 15% vs 10%
    assert by_id["fig3b_alignment"]["verdict"] == "reproduced"
    assert "46.0% for the model under test" in by_id["fig3b_alignment"]["measured"]
    assert by_id["fig3b_fidelity"]["verdict"] == "reproduced"
    assert by_id["fig3c_alignment"]["verdict"] == "not reproduced"
    assert "20.0% for the model under test, 40.0% for the other" in by_id["fig3c_alignment"]["measured"]

    page = render_report(metrics, tmp_path)
    fig3 = section(page, "fig3")
    assert fig3.count('class="figure"') == 4  # one per comparison, the odd one from its histogram
    assert "50.0%" in fig3 and "Paper Fig. 3(a) fine-tuned vs original" in fig3
    assert "could not render" not in page


def test_local_constants_match_the_modules():
    from t2ialign.evaluate.run import GROUPS
    from t2ialign.reward.accuracy import EVAL_SETS

    assert rp.EVAL_SETS == EVAL_SETS
    assert rp.GROUPS == tuple(GROUPS)


def test_cli_report(run):
    from t2ialign.cli import main

    run_dir, _ = run
    assert main(["report", str(run_dir), "--out", str(run_dir / "x.html")]) == 0
    assert (run_dir / "x.html").read_text().startswith("<!DOCTYPE html>")


# --- in a browser ------------------------------------------------------------------------------------------


def test_report_renders_in_a_browser(run, chromium):
    run_dir, n_grid = run
    path = write(run_dir)
    page = chromium.new_page()
    page.set_default_timeout(30_000)
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all(
        "img", "els => els.map(e => [e.className, e.complete, e.naturalWidth])"
    )
    assert len(widths) == 6 + n_grid  # the six figures counted above and the grid's images
    assert all(complete and w > 0 for _, complete, w in widths), widths
    assert sum(cls == "figure" for cls, _, _ in widths) >= 1
    assert page.evaluate("() => window.__xss") is None
    assert page.inner_text("#claims").count("reproduced") >= 1
    assert not [u for u in requests if not u.startswith(("file:", "data:"))], requests
    assert not errors, errors


def test_methods_table_reads_each_models_training_record(tmp_path):
    """Issue 17: one row per evaluated method, its paired difference from base, and the labels and wall
    time of the stage that made it, found by the model's folder."""
    from t2ialign.report.methods import comparison_rows, method_record

    run = tmp_path / "run"
    stat = {"delta": 0.1, "ci95": [0.05, 0.15], "n_prompts": 30, "n_images": 600}
    paired = {g: {"count": stat, "all": stat} for g in ("seen", "unseen_prompt", "unseen_object", "all")}
    models = {
        "base": {"kind": "base", "path": None},
        "finetuned": {
            "kind": "pipeline",
            "path": str(run / "finetune" / "full" / "pipeline"),
            "fd_clip": 0.1,
        },
        "loop3": {"kind": "pipeline", "path": str(run / "loop" / "x" / "round_3" / "finetune" / "pipeline")},
        "dpo": {"kind": "pipeline", "path": str(run / "dpo" / "bin" / "pipeline")},
        "dpo_pairs": {"kind": "pipeline", "path": str(run / "dpo" / "pw" / "pipeline")},
        "rl": {"kind": "pipeline", "path": str(run / "rl" / "kl" / "pipeline")},
        "rejection": {"kind": "rejection", "path": None, "seconds": 12.0},
        "outside": {"kind": "pipeline", "path": str(tmp_path / "elsewhere")},
    }
    metrics = {
        "reward_train": {"n_train": 900},
        "finetune": {"full": {"weights": "reward", "seconds": 100.0}},
        "loop": {
            "x": {
                "rounds": [{"round": 0}]
                + [{"round": k, "labels_total": 300 * k, "wall_s": 10.0} for k in (1, 2, 3)]
            }
        },
        "dpo": {
            "bin": {"pairs": "labels", "n_images": 500, "n_pairs": 2000, "seconds": 50.0},
            "pw": {"pairs": "preferences", "n_images": 800, "n_pairs": 700, "seconds": 60.0},
        },
        "rl": {"kl": {"kl_weight": 0.1, "labels_used": 900, "wall_s": 70.0}},
        "evaluate": {
            "models": models,
            "paired": {n: paired for n in models if n != "base"},
            "config": {"images_per_prompt": 9, "rejection_candidates": 36},
        },
    }
    rec = {n: method_record(metrics, n, m, run) for n, m in models.items()}
    assert rec["finetuned"] == {
        "method": "paper: reward-weighted fine-tuning, 1 round (full)",
        "labels": 900,
        "seconds": 100.0,
    }
    assert (
        rec["loop3"]["labels"] == 900
        and rec["loop3"]["seconds"] == 30.0
        and "3 rounds" in rec["loop3"]["method"]
    )
    assert rec["dpo"]["labels"] == 500 and "binary labels" in rec["dpo"]["method"]
    assert rec["dpo_pairs"]["labels"] == 700 and "pairwise feedback" in rec["dpo_pairs"]["method"]
    assert "KL 0.1" in rec["rl"]["method"] and rec["rl"]["labels"] == 900
    assert rec["rejection"]["labels"] == 900 and "best 9 of 36" in rec["rejection"]["method"]
    assert rec["outside"]["labels"] is None
    rows = comparison_rows(
        metrics,
        run,
        lambda s: f"{100 * s['delta']:+.0f}" if s else "—",
        lambda x, f: "—" if x is None else format(x, f),
    )
    assert [r[1] for r in rows] == [n for n in models if n != "base"]
    assert rows[0][2:6] == ["+10"] * 4 and rows[0][-2:] == ["900", "100"]
    page = render_report(metrics, run)
    assert "Diffusion-DPO from pairwise feedback (pw)" in section(page, "methods")


def test_rl_section_shows_the_guard_and_its_alerts(tmp_path):
    guard = {
        "step": [2, 4, 6],
        "reward": [0.1, 0.3, 0.5],
        "alignment": [0.5, 0.45, 0.3],
        "fd_clip": [0.1, 0.12, 0.2],
    }
    rl = {
        "method": "ddpo+kl",
        "kl_weight": 0.1,
        "steps": 6,
        "max_train_steps": 10,
        "reward_curve": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "guard": guard,
        "alerts": [{"step": 6, "message": "alignment fell by 0.2 while the reward rose"}],
        "stopped_by_guard": True,
    }
    html = section(render_report({"rl": {"kl": rl}}, tmp_path / "run"), "rl")
    assert "ddpo+kl" in html and "step 6: alignment fell by 0.2" in html and "<img" in html
    assert "not measured" in section(render_report({}, tmp_path / "run"), "rl")
