"""Several processes (torchrun / accelerate launch): the rank helpers, the split, and 2 CPU processes
giving exactly the images, rows, embeddings and selection of 1 process on a tiny pipeline."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t2ialign.cli import main
from t2ialign.core import dist
from t2ialign.models import embed
from t2ialign.models.embed import EmbeddingCache, clip_fingerprint
from t2ialign.models.load import load_clip
from t2ialign.reward.model import RewardMLP, RewardModel
from t2ialign.store import Store

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
EMBED_CHUNK = 4  # images per embedding chunk in these runs: several chunks, so both processes embed


@pytest.fixture
def one_process(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not torch.distributed.is_initialized()


def _as_rank(monkeypatch, rank, world):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


# --- the helpers ----------------------------------------------------------------------------------------------


def test_rank_and_world_from_the_launcher_env(one_process, monkeypatch):
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.is_main()) == (0, 1, 0, True)
    _as_rank(monkeypatch, 2, 3)
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.is_main()) == (2, 3, 2, False)
    monkeypatch.setenv("LOCAL_RANK", "0")  # rank 2 of 3 on a second machine
    assert dist.local_rank() == 0 and dist.rank() == 2
    _as_rank(monkeypatch, 3, 3)
    with pytest.raises(ValueError, match=r"RANK=3 is not in 0..2"):
        dist.rank()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        dist.world_size()


def test_shard_takes_every_world_size_th_chunk(one_process, monkeypatch):
    items = list(range(10))
    assert dist.shard(items, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # one process: all, in chunks
    _as_rank(monkeypatch, 0, 2)
    assert dist.shard(items, 3) == [[0, 1, 2], [6, 7, 8]]
    _as_rank(monkeypatch, 1, 2)
    assert dist.shard(items, 3) == [[3, 4, 5], [9]]
    shares = []
    for r in range(4):
        _as_rank(monkeypatch, r, 4)
        shares.append([x for chunk in dist.shard(items, 2) for x in chunk])
    assert sorted(x for s in shares for x in s) == items  # each item once, in one process
    assert [len(s) for s in shares] == [4, 2, 2, 2]  # round robin over chunks of 2: 5 chunks, 4 ranks
    _as_rank(monkeypatch, 3, 4)
    assert dist.shard([1, 2], 1) == []  # more processes than work: the last have none
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        dist.shard(items, 0)


def test_one_process_needs_no_process_group(one_process):
    dist.barrier()
    obj = {"a": 1}
    assert dist.broadcast(obj) is obj and dist.gather(obj) == [obj]
    dist.check_same([1, 2], "anything")
    assert not torch.distributed.is_initialized()


def test_several_processes_without_a_launcher_is_a_clear_error(one_process, monkeypatch):
    _as_rank(monkeypatch, 0, 2)
    with pytest.raises(RuntimeError, match="MASTER_ADDR and MASTER_PORT are not set.*torchrun"):
        dist.barrier()
    assert not torch.distributed.is_initialized()


def test_only_rank_0_writes_the_embedding_cache(one_process, monkeypatch, tmp_path):
    cache = EmbeddingCache(tmp_path, "fp", "images")
    cache.add(["a"], torch.ones(1, 2))  # one process: it writes
    _as_rank(monkeypatch, 1, 2)
    with pytest.raises(RuntimeError, match="only rank 0 writes it"):
        EmbeddingCache(tmp_path, "fp", "images").add(["b"], torch.ones(1, 2))
    cache.add([], torch.ones(0, 2))  # nothing to add is no write, on any rank
    assert EmbeddingCache(tmp_path, "fp", "images").keys == ["a"]


# --- 2 processes against 1 ------------------------------------------------------------------------------------

# Each launched process runs these t2ialign commands in turn and counts the images it sampled and
# embedded itself, so the test sees that the work was split, not done twice or by rank 0 alone.
WORKER = """
import json, os, sys
import t2ialign.generate.images as gi
import t2ialign.models.embed as me
from t2ialign.cli import main

me.EMBED_CHUNK = {chunk}
counts = {{"sampled": 0, "embedded": 0}}
sample_images, embed_images = gi.sample_images, me.embed_images
def counted_sample(pipe, prompts, seeds, cfg):
    counts["sampled"] += len(prompts)
    return sample_images(pipe, prompts, seeds, cfg)
def counted_embed(model, processor, images, batch_size=256):
    counts["embedded"] += len(images)
    return embed_images(model, processor, images, batch_size)
gi.sample_images, me.embed_images = counted_sample, counted_embed
for argv in json.loads(sys.argv[1]):
    assert main(argv) == 0, argv
with open(os.path.join(sys.argv[2], f"rank{{os.environ['RANK']}}.json"), "w") as f:
    json.dump(counts, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], nproc: int = 2, timeout: int = 120) -> list[str]:
    """Run ``python ARGS`` as ``nproc`` processes with the environment torchrun gives them; their stdout."""
    port = _free_port()
    procs = []
    for r in range(nproc):
        env = os.environ | {
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = []
    try:
        for r, p in enumerate(procs):
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, f"rank {r} failed:\n{err[-3000:]}"
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def _image_rows(store: Store) -> set[tuple]:
    keys = ("prompt", "seed", "sha256", "model_id", "model_revision", "role", "width", "height")
    return {(*(r[k] for k in keys), json.dumps(r["sampler"], sort_keys=True)) for r in store.list_images()}


def _embeddings(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{kind: {key: embedding}} of every CLIP cache of the run."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for keys_file in sorted(run.glob("embeddings/*/*.json")):
        keys = json.loads(keys_file.read_text())
        table = load_file(str(keys_file.with_suffix(".safetensors")))["embeddings"]
        out[f"{keys_file.parent.name}/{keys_file.stem}"] = dict(zip(keys, table, strict=True))
    return out


def _save_reward(path: Path, clip_path) -> None:
    """A reward model with fixed random weights on the tiny CLIP: any fixed scorer serves selection."""
    clip, _, clip_id = load_clip(clip_path)
    torch.manual_seed(0)
    meta = {
        "dim": 16,
        "hidden": [8],
        "dropout": 0.0,
        "clip": {"model_id": clip_id, "path": str(clip_path), "fingerprint": clip_fingerprint(clip)},
    }
    RewardModel(RewardMLP(16, hidden=(8,), dropout=0.0), meta).save(path)


def _commands(run: Path, pipeline, clip) -> list[list[str]]:
    sampler = ["--model", str(pipeline), "--steps", "2", "--mixed-precision", "no", "--batch-size", "4"]
    return [
        ["generate", "--run", str(run), "--max-prompts", "5", "--images-per-prompt", "3", *sampler],
        ["reward", "embed", str(run), "--clip", str(clip)],
        ["sample", str(run), "--best-of", "3", "--keep", "1", "--max-prompts", "3", *sampler],
    ]


def test_two_processes_make_what_one_makes(
    one_process, tmp_path, tiny_pipeline_path, tiny_clip_path, monkeypatch, capsys
):
    fresh = tmp_path / "fresh"
    assert main(["prompts", "--run", str(fresh)]) == 0
    _save_reward(fresh / "reward", tiny_clip_path)
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(fresh, one)
    shutil.copytree(fresh, two)

    monkeypatch.setattr(embed, "EMBED_CHUNK", EMBED_CHUNK)
    # one thread, as each launched process has (OMP_NUM_THREADS=1): float sums split over another number
    # of threads may round differently in the last bit, and a pixel then differs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for argv in _commands(one, tiny_pipeline_path, tiny_clip_path):
            assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()

    counts_dir = tmp_path / "counts"
    counts_dir.mkdir()
    worker = ["-c", WORKER.format(chunk=EMBED_CHUNK)]
    # generate, reward embed, sample; then generate and reward embed again: a rerun must add nothing
    cmds = _commands(two, tiny_pipeline_path, tiny_clip_path)
    outs = _launch([*worker, json.dumps([*cmds, cmds[0], cmds[1]]), str(counts_dir)])
    counts = [json.loads((counts_dir / f"rank{r}.json").read_text()) for r in range(2)]
    # 15 images in batches of 4 (4 + 4 | 4 + 3), then 9 candidates (4 + 1 | 4); embedded in chunks of 4 alike
    assert [c["sampled"] for c in counts] == [8 + 5, 7 + 4]
    assert [c["embedded"] for c in counts] == [8 + 5, 7 + 4]
    assert '"generated": 15' in outs[0] and outs[1] == ""  # rank 0 reports, for both

    with Store.open(one) as a, Store.open(two) as b:
        rows = _image_rows(a)
        assert len(rows) == 24 and _image_rows(b) == rows
        for sha in (r[2] for r in rows):
            assert a.image_path(sha).read_bytes() == b.image_path(sha).read_bytes()
    emb_one, emb_two = _embeddings(one), _embeddings(two)
    assert emb_one.keys() == emb_two.keys() and len(emb_one) == 2  # images and texts of one CLIP
    for kind, table in emb_one.items():
        assert table.keys() == emb_two[kind].keys()
        assert all(torch.equal(v, emb_two[kind][k]) for k, v in table.items()), kind  # bitwise
    assert not list(two.glob("embeddings/*/shards/*"))  # merged and removed
    sel_one, sel_two = (json.loads(next(r.glob("rejection/*.json")).read_text()) for r in (one, two))
    assert sel_two["prompts"] == sel_one["prompts"]  # same candidates, rewards, kept and random images
    m_one, m_two = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    (key,) = m_one["rejection_sampling"]
    assert {k: v for k, v in m_two["rejection_sampling"][key].items() if k != "seconds"} == {
        k: v for k, v in m_one["rejection_sampling"][key].items() if k != "seconds"
    }

    # the rerun of generate and reward embed by the same 2 processes added nothing
    assert '"generated": 0' in outs[0] and '"already_stored": 15' in outs[0]
    assert m_two["generate_human"] | {"seconds": 0} == m_one["generate_human"] | {
        "seconds": 0,
        "generated": 0,
        "already_stored": 15,
        "images_per_second": None,
    }
    assert "15 image and" in outs[0] and "24 image and" in outs[0]  # the rerun embeds only sample's 9
