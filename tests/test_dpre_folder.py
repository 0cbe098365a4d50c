"""benchmarks/dpre_folder.py: the world's D_pre with other caption rates, as a folder finetune reads."""

import numpy as np
import pytest
from benchmarks import dpre_folder

from t2ialign.finetune.data import pretrain_pairs
from t2ialign.world import vocab


def test_the_folder_holds_the_same_renders_with_captions_that_never_state_a_count(tmp_path):
    out = tmp_path / "dpre"
    assert dpre_folder.main([str(out), "--count-rate", "0", "--n", "100"]) == 0
    folder = pretrain_pairs(str(out), 100, 64, 0)
    world = pretrain_pairs("world", 100, 64, 0)
    assert len(folder) == 100
    for (_, image, caption), (_, world_image, _) in zip(folder, world, strict=True):
        assert np.array_equal(image, world_image)  # the same scenes, losslessly (PNG)
        assert not any(w in caption.lower().split() for w in vocab.COUNT_WORDS.values()), caption
    # the default rates state a count now and then: the switch is what removed them
    default = [c for _, _, c in pretrain_pairs("world", 400, 64, 0)]
    assert any(c.lower().split()[0] in vocab.COUNT_WORDS.values() for c in default)


def test_a_finished_folder_is_not_overwritten_and_bad_rates_are_refused(tmp_path):
    out = tmp_path / "dpre"
    assert dpre_folder.main([str(out), "--n", "2"]) == 0
    with pytest.raises(SystemExit):
        dpre_folder.main([str(out), "--n", "2"])
    with pytest.raises(SystemExit):
        dpre_folder.main([str(tmp_path / "other"), "--count-rate", "1.5"])


def test_a_dice_folder_holds_the_dice_renders_of_the_same_scenes(tmp_path):
    out = tmp_path / "dice"
    assert dpre_folder.main([str(out), "--n", "20", "--layout", "dice"]) == 0
    folder = pretrain_pairs(str(out), 20, 64, 0)
    dice = pretrain_pairs("world", 20, 64, 0, layout="dice")
    plain = pretrain_pairs("world", 20, 64, 0)
    for (_, image, caption), (key, dice_image, dice_caption), (plain_key, _, plain_caption) in zip(
        folder, dice, plain, strict=True
    ):
        assert np.array_equal(image, dice_image) and caption == dice_caption == plain_caption
        assert key != plain_key  # the cache keys of the two layouts' renders differ
    assert sum(not np.array_equal(a[1], b[1]) for a, b in zip(dice, plain, strict=True)) >= 18
    assert '"layout": "dice"' in (out / "dpre.json").read_text()
