"""The prompt grammar, the splits, and the perturbations (paper Table 1 and Appendix E)."""

import pytest

from t2ialign.config import PromptsConfig
from t2ialign.world import vocab
from t2ialign.world.prompts import CATEGORIES, PromptSpec, build_prompt_set, parse_prompt, perturb


def test_vocabulary_sizes_meet_the_issue():
    assert len(vocab.SHAPES) >= 8 and len(vocab.COLORS) >= 8 and len(vocab.BACKGROUNDS) >= 6
    assert list(vocab.COUNT_WORDS) == [1, 2, 3, 4, 5]
    for phrase in vocab.BACKGROUNDS.values():
        assert phrase.split()[0] in {"in", "on", "under"}


@pytest.mark.parametrize(
    "spec, text, category",
    [
        (PromptSpec("circle", count=2), "Two circles", "count"),
        (PromptSpec("circle", count=1), "One circle", "count"),
        (PromptSpec("circle", color="green"), "A green colored circle", "color"),
        (PromptSpec("star", color="orange"), "An orange colored star", "color"),
        (PromptSpec("circle", background="forest"), "A circle in the forest", "background"),
        (
            PromptSpec("circle", count=2, color="blue", background="forest"),
            "Two blue circles in the forest",
            "combination",
        ),
        (
            PromptSpec("cross", count=5, color="white", background="city"),
            "Five white crosses in the city",
            "combination",
        ),
    ],
)
def test_templates_follow_table_1(spec, text, category):
    assert spec.text() == text
    assert spec.category == category
    assert parse_prompt(text) == spec


def test_plain_object_names_and_partial_captions_parse():
    assert parse_prompt("circle") == PromptSpec("circle")
    assert parse_prompt("stars") == PromptSpec("star")
    assert parse_prompt("two red stars") == PromptSpec("star", count=2, color="red")
    assert parse_prompt("  A Red circle on the moon. ") == PromptSpec(
        "circle", color="red", background="moon"
    )
    assert PromptSpec("ring").text(plain=True) == "Ring"


@pytest.mark.parametrize(
    "text, message",
    [
        ("Two mauve circles", "unknown word 'mauve'"),
        ("Nine circles", "count 9"),
        ("zero circles", "count 0"),
        ("9 circles", "count 9"),
        ("Two circle", "does not agree"),
        ("A circles", "plural"),
        ("colored circle", "'colored' needs a color"),
        ("circle two", "malformed"),
        ("", "empty"),
        ("A dog in the forest", "unknown word 'dog'"),
    ],
)
def test_malformed_prompts_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(text)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": "circle", "color": "mauve"}, "unknown color 'mauve'"),
        ({"shape": "circle", "count": 0}, "count must be an integer from 1 to 5"),
        ({"shape": "circle", "count": 9}, "count must be an integer from 1 to 5"),
        ({"shape": "blob"}, "unknown shape"),
        ({"shape": "circle", "background": "mars"}, "unknown background"),
    ],
)
def test_bad_specs_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptSpec(**kwargs)


def test_prompt_set_splits():
    prompts = build_prompt_set()
    texts = [p.text for p in prompts]
    assert len(texts) == len(set(texts)), "every prompt appears once"
    by_split = {s: [p for p in prompts if p.split == s] for s in ("seen", "unseen_prompt", "unseen_object")}
    # no unseen object ever reaches the feedback split
    assert not any(p.spec.shape in vocab.DEFAULT_UNSEEN_OBJECTS for p in by_split["seen"])
    assert not any(p.spec.shape in vocab.DEFAULT_UNSEEN_OBJECTS for p in by_split["unseen_prompt"])
    assert all(p.spec.shape in vocab.DEFAULT_UNSEEN_OBJECTS for p in by_split["unseen_object"])
    # unseen prompts are new combinations of words that the seen prompts do use
    seen_words = {kv for p in by_split["seen"] for kv in p.spec.constrained().items()}
    for p in by_split["unseen_prompt"]:
        assert set(p.spec.constrained().items()) <= seen_words
    for category in CATEGORIES:
        assert any(p.category == category for p in by_split["seen"])
        assert any(p.category == category for p in by_split["unseen_prompt"])
        assert any(p.category == category for p in by_split["unseen_object"])
    for p in prompts:
        assert p.spec.category == p.category and parse_prompt(p.text) == p.spec
    # about the paper's 2,700 feedback prompts
    assert 2600 <= len(by_split["seen"]) <= 2900


def test_prompt_set_is_deterministic_and_seeded():
    a, b = build_prompt_set(seed=0), build_prompt_set(seed=0)
    assert [(p.text, p.split) for p in a] == [(p.text, p.split) for p in b]
    c = build_prompt_set(seed=1)
    assert [(p.text, p.split) for p in a] != [(p.text, p.split) for p in c]


def test_prompt_config_validates():
    with pytest.raises(ValueError, match="unknown shape"):
        PromptsConfig(unseen_objects=("dragon",))
    with pytest.raises(ValueError, match="unseen_prompt_fraction"):
        PromptsConfig(unseen_prompt_fraction=1.5)


@pytest.mark.parametrize(
    "text",
    ["Two circles", "A green colored circle", "A circle in the forest", "Two blue circles in the forest"],
)
def test_perturbations_differ_and_change_one_named_attribute(text):
    original = parse_prompt(text)
    out = perturb(text, 8, seed=3)
    assert len(out) == 7 and len(set(out)) == 7 and text not in out
    for t in out:
        p = parse_prompt(t)
        assert p.category == original.category, "the template is kept"
        changed = [k for k in vocab.ATTRIBUTES if getattr(p, k) != getattr(original, k)]
        assert len(changed) == 1 and changed[0] in original.constrained()
    assert perturb(text, 8, seed=3) == out, "deterministic by seed"
    assert perturb(text, 8, seed=4) != out


def test_perturbations_respect_shape_pool_and_fall_back_to_double_changes():
    seen = [s for s in vocab.SHAPES if s not in vocab.DEFAULT_UNSEEN_OBJECTS]
    out = perturb("Two circles", 20, seed=0, shapes=seen)
    specs = [parse_prompt(t) for t in out]
    assert all(s.shape in seen for s in specs)
    # "Two circles" has 4 other counts + 7 other seen shapes = 11 single changes; the rest change both
    assert sum(s.count != 2 and s.shape != "circle" for s in specs) == 19 - 11
    with pytest.raises(ValueError, match="only"):
        perturb("Two circles", 1000)
    with pytest.raises(ValueError, match=">= 2"):
        perturb("Two circles", 1)
