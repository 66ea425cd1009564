"""The feature cache: cached training equals uncached training; the sharded store reads what the
encoder computed, fills atomically and resumably, and is safe to fill from two processes at once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nltk.tokenize import TreebankWordTokenizer
from torch.utils.data import DataLoader

import captioner.data.vocab as vocab_module
import captioner.features as features_module
import captioner.train as train_module
from captioner.config import CaptionerConfig
from captioner.data import (
    CaptionGroups,
    CaptionPairs,
    Vocabulary,
    build_transforms,
    load_image,
    select_split,
)
from captioner.data.vocab import tokenize
from captioner.decoder import CaptionDecoder
from captioner.encoder import ImageEncoder
from captioner.features import (
    STALE_AFTER_S,
    FeatureCache,
    FeatureCollate,
    FeatureGroups,
    FeaturePairs,
    write_shard,
)
from captioner.inference import eval_transform
from captioner.model import CaptionModel
from captioner.scoring import load_data_records
from captioner.train import SeededItems
from recurrent import files, precision
from recurrent.checkpoint import load_checkpoint
from recurrent.config import load_config
from recurrent.errors import UserError

TINY = Path(__file__).resolve().parents[1] / "configs" / "captioner" / "tiny.yaml"


def tiny_cfg(annotations: Path, *overrides: str) -> CaptionerConfig:
    return load_config(CaptionerConfig, TINY, [f"data.annotations={annotations}", *overrides])


def quiet_train(cfg: CaptionerConfig, out_dir: Path) -> dict:
    return train_module.train(cfg, out_dir, quiet=True)


def train_records(cfg: CaptionerConfig):
    return select_split(load_data_records(cfg.data), "train")


def frozen_encoder(cfg: CaptionerConfig) -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder(cfg.model).eval()


# --------------------------------------------------------------------------------------------
# Cached training == uncached training


@pytest.mark.parametrize("captions_per_image", [3, 0])
def test_cached_run_trains_on_the_same_batches_with_the_same_losses(
    scenes_annotations: Path, tmp_path: Path, monkeypatch, captions_per_image: int
):
    # Augmentation off (the cache holds eval-transform features), dropout on: the runs must also
    # draw the same dropout masks, before and after a validation (which reads the cache in one run
    # and encodes images in the other).
    overrides = [
        "model.finetune=frozen",
        "model.dropout=0.3",
        f"train.captions_per_image={captions_per_image}",
        "train.batch_size=4",
        "train.max_steps=7",  # 5 steps per epoch with k=3 (20 images / 4): crosses an epoch
        "train.eval_every=3",
        f"train.feature_cache_dir={tmp_path / 'features'}",
    ]
    real_build = train_module.build_transforms
    monkeypatch.setattr(
        train_module,
        "build_transforms",
        lambda size, train, **kwargs: real_build(size, train=False, **kwargs),
    )
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_forward = CaptionDecoder.forward

    def spying_forward(self, features, captions, lengths, *args, **kwargs):
        if self.training:
            seen.append((captions.clone(), features.pooled.detach().clone()))
        return real_forward(self, features, captions, lengths, *args, **kwargs)

    monkeypatch.setattr(CaptionDecoder, "forward", spying_forward)
    runs = {}
    for cache in (False, True):
        seen.clear()
        run_cfg = tiny_cfg(
            scenes_annotations, *overrides, f"train.feature_cache={str(cache).lower()}"
        )
        summary = quiet_train(run_cfg, tmp_path / f"cache-{cache}")
        assert summary["feature_cache"] is cache and summary["steps"] == 7
        runs[cache] = (summary, list(seen))
    (plain, plain_batches), (cached, cached_batches) = runs[False], runs[True]
    assert len(plain_batches) == len(cached_batches) == 7
    rows_per_step = 4 * captions_per_image if captions_per_image else 4
    for (captions_a, pooled_a), (captions_b, pooled_b) in zip(
        plain_batches, cached_batches, strict=True
    ):
        assert captions_a.size(0) == rows_per_step
        assert torch.equal(captions_a, captions_b)  # the same captions in the same rows
        # the same images in the same order (one pooled row per image): the cache holds them in
        # float16
        torch.testing.assert_close(pooled_b, pooled_a, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(
        torch.tensor(cached["losses"]), torch.tensor(plain["losses"]), atol=1e-4, rtol=1e-4
    )
    assert plain["pairs_per_s"] > 0 and cached["images_per_s"] == 0.0  # the cache runs no CNN


def test_the_cache_holds_the_features_of_the_encoder_the_run_starts_from(
    scenes_annotations: Path, tmp_path: Path
):
    # --init-from a run that trained its encoder, into a frozen encoder with the cache: the cache
    # is that encoder's, not a freshly initialised one's (which the run's checkpoints would not
    # hold); a resume with another seed (a setting) reads it again instead of a fresh encoder's
    xe = tiny_cfg(scenes_annotations, "model.finetune=all", "train.max_steps=1")
    start = quiet_train(xe, tmp_path / "xe")["last_checkpoint"]
    cache_dir = tmp_path / "features"
    frozen = [
        "model.finetune=frozen",
        f"train.feature_cache_dir={cache_dir}",
        "train.eval_max_images=1",
    ]
    cfg = tiny_cfg(scenes_annotations, *frozen, "train.max_steps=1")
    train_module.train(cfg, tmp_path / "frozen", quiet=True, init_from=start)
    payload = load_checkpoint(start, task="captioner")
    model = CaptionModel(cfg, len(payload["vocab"]))
    model.load_state_dict(payload["model"])
    expected = FeatureCache(cache_dir, model.encoder, cfg, eval_transform(cfg)).dir.name
    assert [path.name for path in cache_dir.iterdir()] == [expected]
    resumed = tiny_cfg(scenes_annotations, *frozen, "train.max_steps=2", "train.seed=1")
    summary = train_module.train(resumed, tmp_path / "frozen", resume=True, quiet=True)
    assert summary["encoded_images"] == 0
    assert [path.name for path in cache_dir.iterdir()] == [expected]


def test_a_run_that_fills_a_cache_beside_others_says_so(
    scenes_annotations: Path, tmp_path: Path, capsys
):
    """One cache per fingerprint: other settings, or an upgrade (the fingerprint holds the
    precision since 2026-12-05), fill a new cache beside the old one, which nothing reads or
    removes any more (gigabytes at COCO's size). The run that fills one says so, once."""
    cache_dir = tmp_path / "features"
    frozen = ["model.finetune=frozen", f"train.feature_cache_dir={cache_dir}"]
    frozen += ["train.max_steps=1", "train.eval_max_images=1"]
    said = []
    for name, setting in (("a", "fp32"), ("b", "bf16"), ("c", "bf16")):
        cfg = tiny_cfg(scenes_annotations, *frozen, f"train.precision={setting}")
        train_module.train(cfg, tmp_path / name, quiet=True)
        said.append(capsys.readouterr().out)
        if name == "a":
            (older,) = cache_dir.iterdir()
    assert len(list(cache_dir.iterdir())) == 2
    size = sum(shard.stat().st_size for shard in older.glob("shards/*.npy")) / 1e9
    note = (
        f"note: {cache_dir} also holds 1 feature cache(s) of other encoders or settings "
        f"({size:.2f} GB; each folder's meta.json says which), which this run does not read; "
        "delete those no run needs\n"
    )
    assert [note in out for out in said] == [False, True, False]  # once: by the run that fills it


def test_flips_and_the_feature_cache_are_not_taken_together(scenes_annotations: Path, tmp_path):
    """The cache holds each image's features once, unflipped: data.hflip with a frozen encoder
    trained exactly as without it (the same weights bit for bit), without a word. It is refused,
    naming both ways out; without the cache, flips are taken."""
    flip = ["data.hflip=true", "train.max_steps=2", "train.eval_max_images=1"]
    for frozen in ("model.finetune=frozen", "train.encoder_lr=0"):
        with pytest.raises(UserError, match="data.hflip flips training images, but the frozen"):
            quiet_train(tiny_cfg(scenes_annotations, frozen, *flip), tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
    runs = {}
    for name, extra in (("flips", flip), ("none", [*flip[1:], "data.hflip=false"])):
        off = ["model.finetune=frozen", "train.feature_cache=false"]
        cfg = tiny_cfg(scenes_annotations, *off, *extra)
        quiet_train(cfg, tmp_path / name)
        runs[name] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    assert any(not torch.equal(runs["flips"][k], runs["none"][k]) for k in runs["none"])
    trainable = tiny_cfg(scenes_annotations, "train.feature_cache=true", *flip)  # reads no cache
    assert quiet_train(trainable, tmp_path / "trainable")["feature_cache"] is False


def test_feature_groups_pick_the_references_caption_groups_pick(scenes_annotations: Path):
    # Under the trainer's per-item seeding, with the random-crop train transform on the image side:
    # the picks come first, so augmentation does not shift them.
    cfg = tiny_cfg(scenes_annotations)
    records = train_records(cfg)
    vocab = Vocabulary.build(caption for record in records for caption in record.captions)
    store = _FakeStore(len(records))
    train_tf = build_transforms(cfg.data.image_size, train=True)
    for k in (1, 3, 7):
        images = SeededItems(CaptionGroups(records, vocab, train_tf, k, max_length=9), seed=5)
        cached = SeededItems(FeatureGroups(records, vocab, store, k, max_length=9), seed=5)
        for key in [(0, 0), (0, 7), (3, 7), (1, len(records) - 1)]:
            _, expected = images[key]
            index, got = cached[key]
            assert index == key[1] and len(got) == k
            assert [ids.tolist() for ids in got] == [ids.tolist() for ids in expected]
    pairs = CaptionPairs(records, vocab, train_tf, max_length=9)
    cached_pairs = FeaturePairs(records, vocab, store, max_length=9)
    assert cached_pairs.pairs == pairs.pairs and len(cached_pairs) == len(pairs)
    for index in range(0, len(pairs), 7):
        image, [ids] = cached_pairs[index]
        assert image == pairs.pairs[index][0]
        assert ids.tolist() == pairs[index][1].tolist()


class _FakeStore:
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


# --------------------------------------------------------------------------------------------
# The sharded store


def _small_shards(monkeypatch, images_per_shard: int, cfg: CaptionerConfig) -> None:
    """Make shards hold `images_per_shard` images of the tiny encoder (4x4 grid, 128 channels)."""
    row_bytes = (1 + 16) * 128 * 2
    monkeypatch.setattr(features_module, "SHARD_BYTES", images_per_shard * row_bytes)


def test_store_reads_what_the_encoder_computed(scenes_annotations: Path, tmp_path, monkeypatch):
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    _small_shards(monkeypatch, 6, cfg)
    records = train_records(cfg)
    encoder, transform = frozen_encoder(cfg), eval_transform(cfg)
    cache = FeatureCache(tmp_path, encoder, cfg, transform)
    assert cache.ensure(records, device=torch.device("cpu"), batch_size=4, progress=False) == 20
    assert len(list(cache.shard_dir.glob("*.npy"))) == 4  # 6 + 6 + 6 + 2 images
    with torch.no_grad():
        images = torch.stack([transform(load_image(r.image_path)) for r in records])
        direct = encoder(images)
    order = [13, 2, 2, 19, 0, 7, 6, 5]  # across shards, repeated, unsorted
    mapped = cache.store(records, preload_bytes=0)
    loaded = cache.store(records)
    assert not mapped.preloaded and loaded.preloaded
    via_map, via_memory = mapped.features(order), loaded.features(order)
    assert via_map.grid.dtype == torch.float16 and via_map.grid_hw == direct.grid_hw == (4, 4)
    assert torch.equal(via_map.grid, via_memory.grid)
    assert torch.equal(via_map.pooled, via_memory.pooled)
    expected_grid = direct.grid[order].half()
    expected_pooled = direct.pooled[order].half()
    torch.testing.assert_close(via_map.grid, expected_grid, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(via_map.pooled, expected_pooled, atol=1e-3, rtol=1e-3)
    pooled, grid, grid_hw = cache.load(records[19])
    assert torch.equal(grid, via_map.grid[3]) and torch.equal(pooled, via_map.pooled[3])

    # A later process (a new FeatureCache) finds everything and encodes nothing.
    again = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, transform)
    assert again.missing(records) == []
    assert again.ensure(records, device=torch.device("cpu"), progress=False) == 0
    # a shard whose .npy is gone: its images are encoded again (the error said "train again",
    # and training again met the same error)
    lost = sorted(cache.shard_dir.glob("*.npy"))[1]
    lost_images = len(json.loads(lost.with_suffix(".json").read_text())["keys"])
    lost.unlink()
    again = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, transform)
    assert len(again.missing(records)) == lost_images > 0
    assert again.ensure(records, device=torch.device("cpu"), progress=False) == lost_images
    assert torch.equal(again.store(records).features(order).grid, via_memory.grid)
    # other weights under the same settings (a weights file replaced in place): a cache of its own
    changed = frozen_encoder(cfg)
    with torch.no_grad():
        next(changed.parameters()).add_(0.01)
    assert FeatureCache(tmp_path, changed, cfg, transform).dir != cache.dir
    # an image rewritten in place with the same number of bytes (a new mtime) is encoded again
    rewritten = records[5].image_path
    stat = os.stat(rewritten)
    os.utime(rewritten, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        later = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, transform)  # a later run
        assert later.missing(records) == [records[5]]
    finally:
        os.utime(rewritten, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # bf16 features differ from these fp32 ones by about 1%: a bf16 run has a cache of its own
    # (an fp32 run reused bf16 features silently)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # any CI machine
    bf16 = tiny_cfg(scenes_annotations, "model.finetune=frozen", "train.precision=bf16")
    other = FeatureCache(tmp_path, frozen_encoder(bf16), bf16, transform)
    assert other.dir != cache.dir and len(other.missing(records)) == 20
    # The cache encodes in the training precision, as an uncached run's frozen encoder would:
    # bf16 asked for on a CPU without native bf16 is bf16 there too (it had encoded in fp32).
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    emulated = FeatureCache(tmp_path / "emulated", frozen_encoder(bf16), bf16, transform)
    assert emulated.dir.name == other.dir.name
    emulated.ensure(records[:4], device=torch.device("cpu"), progress=False)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        in_training = frozen_encoder(bf16)(images[:4])
    assert torch.equal(
        emulated.store(records[:4]).features([0, 1, 2, 3]).grid, in_training.grid.half()
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_collate_batches_with_workers(scenes_annotations: Path, tmp_path, monkeypatch, workers):
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    _small_shards(monkeypatch, 6, cfg)
    records = train_records(cfg)
    vocab = Vocabulary.build(caption for record in records for caption in record.captions)
    cache = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    cache.ensure(records, device=torch.device("cpu"), batch_size=8, progress=False)
    store = cache.store(records, preload_bytes=0)  # the memory-mapped path, opened per worker
    dataset = SeededItems(FeatureGroups(records, vocab, store, 2), seed=0)
    batches = [[(0, i) for i in (3, 14, 9)], [(0, i) for i in (0, 19, 6)]]
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=FeatureCollate(store), num_workers=workers
    )
    got = list(loader)
    for batch, (features, captions, lengths) in zip(batches, got, strict=True):
        indices = [index for _, index in batch]
        expected = store.features(indices)
        assert torch.equal(features.grid, expected.grid) and features.grid_hw == (4, 4)
        assert torch.equal(features.pooled, expected.pooled)
        assert captions.shape[0] == lengths.shape[0] == 6  # 3 images x 2 references
        rows = [dataset[key][1] for key in batch]
        for row, ids in enumerate(caption for group in rows for caption in group):
            assert lengths[row] == len(ids) and captions[row, : len(ids)].tolist() == ids.tolist()


class _Interrupted(Exception):
    pass


def test_interrupted_fill_keeps_complete_shards_and_resumes(
    scenes_annotations: Path, tmp_path, monkeypatch
):
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    _small_shards(monkeypatch, 6, cfg)
    records = train_records(cfg)
    written: list[str] = []
    real_write = features_module.write_shard

    def write_twice_then_die(shard_dir, keys, rows, grid_hw):
        if len(written) == 2:
            # the machine goes down in the middle of writing the third shard's rows
            (shard_dir / ".half-written.npy.tmp").write_bytes(rows.tobytes()[:100])
            raise _Interrupted
        written.append(real_write(shard_dir, keys, rows, grid_hw))
        return written[-1]

    monkeypatch.setattr(features_module, "write_shard", write_twice_then_die)
    cache = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    with pytest.raises(_Interrupted):
        cache.ensure(records, device=torch.device("cpu"), batch_size=4, progress=False)
    assert sorted(p.stem for p in cache.shard_dir.glob("*.json")) == sorted(written)
    assert len(cache.missing(records)) == 20 - 12

    monkeypatch.setattr(features_module, "write_shard", real_write)
    encoded: list[int] = []
    real_forward = ImageEncoder.forward

    def counting_forward(self, images):
        encoded.append(images.size(0))
        return real_forward(self, images)

    monkeypatch.setattr(ImageEncoder, "forward", counting_forward)
    resumed = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    assert resumed.ensure(records, device=torch.device("cpu"), batch_size=4, progress=False) == 8
    assert sum(encoded) == 8  # only the images no complete shard held
    assert not list(resumed.shard_dir.glob("*.tmp"))  # the interrupted write was cleaned up
    assert resumed.missing(records) == []
    fresh = FeatureCache(tmp_path / "fresh", frozen_encoder(cfg), cfg, eval_transform(cfg))
    fresh.ensure(records, device=torch.device("cpu"), batch_size=4, progress=False)
    everything = range(len(records))
    assert torch.equal(
        resumed.store(records).read(everything), fresh.store(records).read(everything)
    )


def _fill_in_child(annotations: str, root: str, barrier, queue, share: int | None = None) -> None:
    cfg = tiny_cfg(Path(annotations), "model.finetune=frozen")
    features_module.SHARD_BYTES = 3 * (1 + 16) * 128 * 2  # 3 images per shard
    real_forward = ImageEncoder.forward

    def slow_forward(self, images):
        time.sleep(0.1)  # 1 s of encoding in all: the other process surely finds it under way
        return real_forward(self, images)

    ImageEncoder.forward = slow_forward
    cache = FeatureCache(root, frozen_encoder(cfg), cfg, eval_transform(cfg))
    records = train_records(cfg)
    if share is not None:  # a rank of two, filling its own half without the lock
        records = records[share::2]
    waits: list[str] = []
    barrier.wait(timeout=60)
    encoded = cache.ensure(
        records,
        device=torch.device("cpu"),
        batch_size=2,
        progress=False,
        log=waits.append,
        exclusive=share is None,
    )
    queue.put((encoded, len(waits)))


def _run_to_the_end(children: list) -> None:
    """Start the child processes and wait for each to end well; kill them all if one does not.

    They come from the fork server (a fresh interpreter, started by exec), not forked from this
    test process: a fork of it copies whatever locks its other threads (the test runner's,
    torch's) hold at that moment, and a child that needed one waited for ever (seen twice in a
    whole suite with torch 2.4; never alone)."""
    for child in children:
        child.start()
    try:
        for child in children:
            child.join(timeout=120)
            assert child.exitcode == 0
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()


@pytest.mark.skipif(features_module.fcntl is None, reason="needs fcntl.flock")
def test_two_processes_filling_at_once_encode_each_image_once(scenes_annotations: Path, tmp_path):
    context = multiprocessing.get_context("forkserver")
    queue, barrier = context.Queue(), context.Barrier(2)
    args = (str(scenes_annotations), str(tmp_path), barrier, queue)
    children = [context.Process(target=_fill_in_child, args=args) for _ in range(2)]
    _run_to_the_end(children)
    results = sorted(queue.get(timeout=5) for _ in children)
    # One process encoded everything; the other waited for it and then found nothing missing.
    assert results == [(0, 1), (20, 0)]
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    cache = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    keys = [key for path in cache.shard_dir.glob("*.json") for key in _json_keys(path)]
    assert len(keys) == len(set(keys)) == 20
    assert not list(cache.shard_dir.glob("*.tmp"))


def test_a_fill_removes_the_temporary_shards_of_processes_killed_mid_write(
    scenes_annotations: Path, tmp_path, monkeypatch
):
    """The ranks of a torchrun job fill without a lock (each its share), so a rank killed while
    writing a shard left its temporary file (up to SHARD_BYTES, 256 MB) for good: only a locked
    fill cleaned, and a full cache returned before cleaning. A writer of this machine that is
    gone is known by its process id in the name, whatever the mode; a live one's file stays."""
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    _small_shards(monkeypatch, 6, cfg)
    gone = subprocess.Popen(["true"])
    gone.wait()
    cache = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    cache.shard_dir.mkdir(parents=True)

    def temporary(pid: int, name: str = "00001-a.npy", age: float = 3600.0) -> Path:
        path = cache.shard_dir / f".{name}.{files.HOST}-{pid}.abcd1234.tmp"
        path.write_bytes(b"\x93NUMPY half a shard")
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    stale, live = temporary(gone.pid), temporary(os.getpid(), "00002-b.json")
    # written a moment ago: a writer of another process namespace (a container) may look gone
    fresh = temporary(gone.pid, "00003-c.npy", age=10.0)
    records = train_records(cfg)
    cpu = torch.device("cpu")
    encoded = cache.ensure(records, device=cpu, batch_size=4, progress=False, exclusive=False)
    assert encoded == len(records) and not stale.exists() and live.exists() and fresh.exists()
    stale = temporary(gone.pid)  # a full cache cleans too
    assert cache.ensure(records, device=cpu, progress=False, exclusive=False) == 0
    assert not stale.exists() and live.exists()


def test_a_lock_free_fill_leaves_a_shard_whose_index_may_still_come_not_one_left_long_ago(
    scenes_annotations: Path, tmp_path
):
    """Without the lock another process may be between writing a shard's data and its index:
    the data stays (a locked fill removes it, when nobody else writes), unless it was written
    over STALE_AFTER_S ago: its writer was killed between the two (it stayed for good)."""
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    cache = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    cache.shard_dir.mkdir(parents=True)
    pending = cache.shard_dir / "00000001-another-rank.npy"  # its .json not written yet
    pending.write_bytes(b"\x93NUMPY a whole shard")
    left = cache.shard_dir / "00000002-killed-rank.npy"
    left.write_bytes(b"\x93NUMPY a whole shard")
    age = time.time() - STALE_AFTER_S - 60
    os.utime(left, (age, age))
    cache.ensure([], device=torch.device("cpu"), progress=False, exclusive=False)
    assert pending.exists() and not left.exists()


def test_the_note_on_other_caches_sums_their_shards(scenes_annotations: Path, tmp_path):
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    cache = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    assert cache.others() is None
    for folder, size in ((cache.dir, 3_000_000_000), (tmp_path / "older", 1_500_000_000)):
        (folder / "shards").mkdir(parents=True)
        (folder / "meta.json").write_text("{}")
        with open(folder / "shards" / "a.npy", "wb") as handle:
            handle.truncate(size)  # sparse: no disk used
        (folder / "shards" / "a.json").write_text("{}")
    note = cache.others()
    assert note is not None and "also holds 1 feature cache(s) of other encoders" in note
    assert "(1.50 GB;" in note  # the other's shards, not this cache's nor the indexes


def test_ranks_fill_disjoint_shares_in_parallel(scenes_annotations: Path, tmp_path):
    context = multiprocessing.get_context("forkserver")
    queue, barrier = context.Queue(), context.Barrier(2)
    children = [
        context.Process(
            target=_fill_in_child,
            args=(str(scenes_annotations), str(tmp_path), barrier, queue, share),
        )
        for share in (0, 1)
    ]
    _run_to_the_end(children)
    assert sorted(queue.get(timeout=5) for _ in children) == [(10, 0), (10, 0)]  # nobody waited
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    cache = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    keys = [key for path in cache.shard_dir.glob("*.json") for key in _json_keys(path)]
    assert len(keys) == len(set(keys)) == 20 and cache.missing(train_records(cfg)) == []
    assert not (cache.dir / "fill.lock").exists()


def _json_keys(path: Path) -> list[str]:
    return json.loads(path.read_text())["keys"]


def test_damaged_or_missing_shards_are_one_line_errors(
    scenes_annotations: Path, tmp_path, monkeypatch
):
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    records = train_records(cfg)[:3]
    cache = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    with pytest.raises(UserError, match="missing from"):
        cache.store(records)
    cache.ensure(records, device=torch.device("cpu"), progress=False)
    [shard] = cache.shard_dir.glob("*.npy")
    whole = shard.read_bytes()
    shard.write_bytes(whole[:200])  # truncated
    with pytest.raises(UserError, match="damaged"):
        cache.store(records, preload_bytes=0).read([0])
    shard.write_bytes(whole)
    store = cache.store(records, preload_bytes=0)
    shard.unlink()  # after the store read the indexes
    with pytest.raises(UserError, match="is gone; train again"):
        store.read([0])
    # and training again encodes those images again
    assert (
        len(FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg)).missing(records))
        == 3
    )
    shard.write_bytes(whole)
    [index] = cache.shard_dir.glob("*.json")
    index.write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))


def test_features_beyond_float16_are_refused(scenes_annotations: Path, tmp_path, monkeypatch):
    # A random deep ResNet's raw activations can pass 65504: caching them would train on inf/nan.
    cfg = tiny_cfg(scenes_annotations, "model.finetune=frozen")
    real_forward = ImageEncoder.forward

    def huge_forward(self, images):
        features = real_forward(self, images)
        return features._replace(grid=features.grid * 1e6, pooled=features.pooled * 1e6)

    monkeypatch.setattr(ImageEncoder, "forward", huge_forward)
    cache = FeatureCache(tmp_path, frozen_encoder(cfg), cfg, eval_transform(cfg))
    with pytest.raises(UserError, match="beyond float16's range"):
        cache.ensure(train_records(cfg)[:2], device=torch.device("cpu"), progress=False)
    assert cache.missing(train_records(cfg)[:2])  # nothing was stored


def test_write_shard_refuses_other_shapes(tmp_path):
    with pytest.raises(ValueError):
        write_shard(tmp_path, ["a"], np.zeros((1, 3, 4), dtype=np.float32), (1, 2))
    with pytest.raises(ValueError):
        write_shard(tmp_path, ["a", "b"], np.zeros((1, 3, 4), dtype=np.float16), (1, 2))


# --------------------------------------------------------------------------------------------
# COCO scale: the faster tokenizer gives nltk's Treebank tokens

_NLTK = TreebankWordTokenizer()  # the reference: nltk's own tokenizer, as nltk runs it

# Words of the fast path (contractions Treebank splits among them), and others that leave it.
_PLAIN = st.one_of(
    st.sampled_from("a dog on the 2 3 cannot can not gonna gon na wanna gimme gotta lemme".split()),
    st.text(alphabet="abz09 ,.", max_size=6),
)
_ODD = st.one_of(
    st.sampled_from("'t is n't don't it's 1,000 3.5 x,5 .. ... -- ( ) \" '' `` ? ! $ Dog".split()),
    st.text(alphabet="az0 ,.'\"-!?;:()[]{}<>&@#$%`\t\nAZé\u0663\u00a0", max_size=6),
)


@given(
    st.one_of(st.lists(_PLAIN, max_size=12), st.lists(st.one_of(_PLAIN, _ODD), max_size=12)),
    st.sampled_from(["", ".", " .", ". ", ",", "  ", "!", "'"]),
)
@example([",,a"], "")  # Treebank's comma rule consumes the next character: ",a" stays a token
@example(["wanna"], ".")
@settings(max_examples=300, deadline=None)
def test_tokenize_fast_path_equals_treebank(pieces: list[str], ending: str):
    text = " ".join(pieces) + ending
    spaced = " ".join(text.lower().split())  # tokenize makes any whitespace one space first
    treebank = nltk_words(spaced)
    # and tokenizes the words again, joined by spaces, until they settle (",,a" gives ",a", "a")
    while nltk_words(" ".join(treebank)) != treebank:
        treebank = nltk_words(" ".join(treebank))
    assert tokenize(text) == treebank


_CJK = "一只狗犬がかのｶﾞﾟ\u3099\u309a\u3000「」。，、々〇ー・ \t\n\x1f"
_MIXED = [*"一只狗がｶﾞ\u3099\u3000。，ab1 .,'-\"`", "n't", "'s"]


@given(
    st.one_of(st.text(alphabet=_CJK, max_size=20), st.lists(st.sampled_from(_MIXED)).map("".join))
)
@settings(max_examples=300, deadline=None)
def test_tokenize_of_chinese_and_japanese_equals_treebank(text: str):
    """Chinese and Japanese characters spaced apart, then nltk's tokenizer, as for any text; a
    caption of them and whitespace alone takes a fast path that skips the Treebank rules."""
    spaced = vocab_module._UNSPACED_CHARACTER.sub(r" \1 ", vocab_module._normalized(text.lower()))
    treebank = nltk_words(" ".join(spaced.split()))
    while nltk_words(" ".join(treebank)) != treebank:  # until the words settle, as for English
        treebank = nltk_words(" ".join(treebank))
    assert tokenize(text) == treebank


def test_tokenize_fast_path_is_taken_for_chinese_and_japanese(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(vocab_module._TREEBANK, "tokenize", lambda text: calls.append(text) or [])
    assert tokenize("一个人在草地上，放风筝。\n") == list("一个人在草地上放风筝")
    assert tokenize("犬が走る") == ["犬", "が", "走", "る"]
    assert calls == []
    tokenize("3只狗")  # with a digit (or any ASCII): the Treebank rules, on the spaced text
    assert calls[0] == "3 只 狗"


def nltk_words(text: str) -> list[str]:
    return [token for token in _NLTK.tokenize(text) if any(c.isalnum() for c in token)]


def test_tokenize_fast_path_is_taken_for_plain_captions(monkeypatch):
    # Plain captions never reach the Treebank rules; the others still do.
    calls: list[str] = []
    monkeypatch.setattr(vocab_module._TREEBANK, "tokenize", lambda text: calls.append(text) or [])
    plain = ["A man riding a wave on top of a surfboard.", "two dogs, one cat ", "3 cows."]
    assert [tokenize(text) for text in plain] == [
        "a man riding a wave on top of a surfboard".split(),
        ["two", "dogs", "one", "cat"],
        ["3", "cows"],
    ]
    assert calls == []
    others = ["I cannot.", "It's a dog.", "1,000 birds", "a dog (left)"]
    for text in others:
        tokenize(text)
    assert [call for call in calls if call] == [text.lower() for text in others]
