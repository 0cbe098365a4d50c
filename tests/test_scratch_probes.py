"""benchmarks/scratch_probes.py: two probes are compared on the same prompts and seeds, paired."""

import numpy as np
import pytest
from benchmarks import scratch_probes


def test_compare_pairs_the_newest_evaluations_of_two_probes(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch_probes, "OUT", tmp_path)
    hit_a = np.zeros((10, 4))
    hit_b = np.zeros((10, 4))
    hit_b[:5] = 1.0  # b reads the count right on every image of half the prompts, a on none
    for name, hit, step in (("a", hit_a, 4000), ("b", hit_b, 3000)):
        np.savez(tmp_path / f"scratch_{name}_images.npz", hit=hit, good=hit * 0, read=np.zeros(40), step=step)
    out = scratch_probes.compare("a", "b")
    assert out["steps"] == [4000, 3000]
    assert out["count_read_right"]["delta"] == pytest.approx(0.5)
    lo, hi = out["count_read_right"]["ci95"]
    assert 0.1 < lo < 0.5 < hi <= 0.9
    assert out["aligned"]["delta"] == 0.0
    assert out["count_read_right"]["n_prompts"] == 10 and out["count_read_right"]["n_images"] == 40
