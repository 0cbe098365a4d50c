"""benchmarks/reward_probes.py: the linear probe, and the probe on a run's own images."""

import io
import re

import torch
from benchmarks import reward_probes

from t2ialign.models.load import load_clip
from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render


def test_the_probe_reads_a_separable_attribute_and_not_a_random_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    separable = (x[:, 3] > 0).long()
    random = torch.randint(0, 2, (400,), generator=g)
    assert reward_probes._probe(x, separable, 300) >= 0.95
    assert reward_probes._probe(x, random, 300) < 0.7


def test_the_auc_across_prompts_rewards_a_scorer_of_prompts_and_counts_ties_half():
    items = [
        {"sha256": f"{p}{i}", "prompt": p, "y": y}
        for p, ys in (("easy", (1, 1, 1, 0)), ("hard", (0, 0, 0, 1)))
        for i, y in enumerate(ys)
    ]
    by_prompt = {r["sha256"]: 1.0 if r["prompt"] == "easy" else 0.0 for r in items}
    by_label = {r["sha256"]: float(r["y"]) for r in items}
    assert reward_probes.across_prompts_auc(by_label, items) == 1.0
    # the prompt scorer: 9 of 16 (good, bad) pairs won, 6 tied, 1 lost
    assert reward_probes.across_prompts_auc(by_prompt, items) == 0.75


def test_the_probe_on_a_runs_own_images_reads_their_colors(tmp_path, capsys):
    prompts = build_prompt_set()
    by_color = {}
    for p in prompts:
        if p.category == "color":
            by_color.setdefault(p.spec.color, p)
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(prompts)
        for p in list(by_color.values())[:4]:
            for seed in range(30):
                buf = io.BytesIO()
                render(p.spec, seed).pil().save(buf, format="PNG")
                sha = store.put_image_bytes(buf.getvalue())
                store.add_image(sha, p.text, "m", seed, {}, "human", width=64, height=64)
    clip, processor, _ = load_clip()
    reward_probes.generated_probe(str(tmp_path / "run"), clip, processor, n=100)
    out = capsys.readouterr().out
    color = re.search(r"own images: color\s+([\d.]+)% \(majority class (\d+)%; (\d+) of 100", out)
    assert color, out
    assert float(color.group(1)) >= 90.0 and int(color.group(2)) <= 40
    assert len(re.findall(r"own images: (count|color|shape|background) ", out)) == 4
