"""captioner.train / features / evaluate / caption as a library, on tiny models and a few scenes.

Properties checked: a checkpoint decodes to exactly the captions (and BLEU) training saw; a crash
and --resume reproduce an uninterrupted run bit for bit; the feature cache runs the CNN once per
image and never again; best.pt follows the best val BLEU-4; patience stops training.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

import captioner.evaluate as evaluate_module
import captioner.train as train_module
from captioner.config import (
    CaptionerConfig,
    TrainConfig,
    check_config,
    describe_data,
    describe_model,
)
from captioner.data import (
    OLDER_WEIGHTS,
    PATHS_OUTSIDE_ABSOLUTE,
    SPLIT_RULE,
    ImageRecord,
    Vocabulary,
    load_image,
    select_split,
)
from captioner.data.vocab import tokenize
from captioner.encoder import ImageEncoder
from captioner.features import FeatureCache
from captioner.inference import caption_images, eval_transform, load_captioner
from captioner.metrics import bleu_scores
from captioner.model import CaptionModel
from captioner.scoring import (
    evaluate_split,
    image_ids,
    image_key,
    load_data_records,
    older_split,
    seen_in_training,
    trained_names,
)
from captioner.train import (
    EpochBatches,
    _batch_norm_min_images,
    captions_fingerprint,
    parameter_parts,
    scheduled_sampling,
    train,
)
from recurrent import engine
from recurrent.checkpoint import export_checkpoint, load_checkpoint, save_checkpoint
from recurrent.config import load_config, to_dict
from recurrent.distributed import Distributed
from recurrent.errors import UserError

TINY = Path(__file__).resolve().parents[1] / "configs" / "captioner" / "tiny.yaml"


def tiny_cfg(annotations: Path, *overrides: str) -> CaptionerConfig:
    return load_config(CaptionerConfig, TINY, [f"data.annotations={annotations}", *overrides])


def quiet_train(cfg: CaptionerConfig, out_dir: Path, resume: bool = False) -> dict:
    return train(cfg, out_dir, resume, quiet=True)


def test_the_vocabulary_and_the_caption_lengths_are_the_train_splits(
    scenes_annotations: Path, tmp_path: Path, record_calls
):
    """Words seen only in val or test captions stay out of the vocabulary (they would be <unk> to
    a model that never trained on them), and a caption of exactly `data.max_caption_length` words
    is trained on whole: <start>, every word, <end>."""
    data = json.loads(scenes_annotations.read_text())
    for image in data["images"]:
        if image["split"] in ("val", "test"):
            image["sentences"].append({"raw": "a zebra grazes", "tokens": ["a", "zebra", "grazes"]})
    annotations = tmp_path / "dataset_scenes.json"
    annotations.write_text(json.dumps(data))
    train_captions = [
        s["raw"]
        for image in data["images"]
        if image["split"] == "train"
        for s in image["sentences"]
    ]
    longest = max(len(tokenize(c)) for c in train_captions)
    made = record_calls(train_module, "CaptionPairs")
    cfg = tiny_cfg(
        annotations,
        f"data.image_root={scenes_annotations.parent}",
        f"data.max_caption_length={longest}",
        "train.max_steps=1",
        "train.eval_every=0",
    )
    quiet_train(cfg, tmp_path / "run")
    vocab = Vocabulary.from_list(
        load_checkpoint(tmp_path / "run" / "last.pt", task="captioner")["vocab"]
    )
    assert vocab.to_list() == Vocabulary.build(train_captions, 1).to_list()
    assert "zebra" not in vocab.to_list() and "grazes" not in vocab.to_list()
    [pairs] = [call.result for call in made]
    for index, (record, caption) in enumerate(pairs.pairs):
        whole = vocab.encode(pairs.records[record].captions[caption])
        assert pairs[index][1].tolist() == whole  # nothing cut: no caption is longer than this
    assert max(len(pairs[i][1]) for i in range(len(pairs))) == longest + 2


def test_checkpoint_decodes_to_what_training_scored(scenes_annotations: Path, tmp_path: Path):
    cfg = tiny_cfg(scenes_annotations, "train.max_steps=3", "train.eval_every=0")
    summary = quiet_train(cfg, tmp_path / "run")
    assert summary["steps"] == 3 and summary["stop_reason"] == "max_steps"
    assert len(summary["losses"]) == 3 and all(loss > 0 for loss in summary["losses"])
    last = load_checkpoint(tmp_path / "run" / "last.pt", task="captioner")
    assert last["step"] == 3  # the stop was followed by a validation and a checkpoint
    # the card describes the model and data in the words the app uses for any checkpoint
    card, config = last["card"], last["config"]
    assert (
        card["architecture"]
        == describe_model(config["model"])
        == (
            "ResNet-18 encoder (to layer2, all trained) + soft attention, "
            "1-layer LSTM decoder, hidden 32"
        )
    )
    train_images = len(select_split(load_data_records(cfg.data), "train"))
    assert card["data"] == {**describe_data(config["data"]), "size": train_images}
    assert card["data"]["name"] == "synthetic scenes (coloured shapes)"

    # best.pt == last.pt here (one validation): reload it and decode the val split again.
    captioner = load_captioner(str(tmp_path / "run" / "best.pt"))
    assert not captioner.model.training
    records = select_split(load_data_records(cfg.data), "val")
    scores, predictions = evaluate_split(captioner, records, coco_metrics=False)
    assert scores == summary["best_scores"]  # same weights, same decoded captions, same BLEU
    captioner.model.train()  # BatchNorm would use batch statistics: evaluation switches to eval
    assert evaluate_split(captioner, records, coco_metrics=False)[0] == scores
    assert captioner.model.training  # and back
    captioner.model.eval()

    # The PIL path of the library API decodes the same captions, and BLEU is computed from them.
    results = caption_images(
        captioner, [load_image(r.image_path) for r in records], beam_size=cfg.decode.beam_size
    )
    captions = [result.caption for result in results]
    assert captions == [prediction["caption"] for prediction in predictions]
    assert bleu_scores([list(r.captions) for r in records], captions) == scores
    assert [p["image_id"] for p in predictions] == image_ids(records)

    # Attention maps fold to (words, grid_h, grid_w) and each word's map sums to 1.
    for result in results:
        assert result.attention is not None
        assert result.attention.shape == (len(result.words), 4, 4)  # 32 px through layer2
        torch.testing.assert_close(result.attention.sum(dim=(1, 2)), torch.ones(len(result.words)))
        assert result.beams[0][0] == result.caption

    # The saved weights are the model's: teacher-forced logits of a reloaded copy agree exactly.
    vocab = Vocabulary.from_list(last["vocab"])
    model = CaptionModel(cfg, len(vocab)).eval()
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "best.pt")["model"])
    images = torch.randn(2, 3, 32, 32)
    captions_ids = torch.tensor([vocab.encode("a small red circle")] * 2)
    lengths = torch.full((2,), captions_ids.size(1))
    with torch.no_grad():
        expected, _ = model(images, captions_ids, lengths)
        got, _ = captioner.model(images, captions_ids, lengths)
    assert torch.equal(expected, got)


class _Crash(Exception):
    pass


SCHEDULED_SAMPLING = [
    "train.scheduled_sampling=0.5",
    "train.scheduled_sampling_start=2",
    "train.scheduled_sampling_ramp_steps=4",
]


@pytest.mark.parametrize("sampling", [[], SCHEDULED_SAMPLING], ids=["xe", "scheduled_sampling"])
def test_resume_continues_exactly(
    scenes_annotations: Path, tmp_path: Path, monkeypatch, sampling: list[str]
):
    # 10 steps per epoch (80 pairs / 8): the crash at step 4 is mid-epoch; dropout and random crops
    # are on (and with scheduled sampling, its draws), so RNG and data order must both be restored.
    overrides = ["train.max_steps=8", "train.eval_every=4", "model.dropout=0.3", *sampling]
    cfg = tiny_cfg(scenes_annotations, *overrides)
    straight = quiet_train(cfg, tmp_path / "straight")

    real_save = engine.save_checkpoint

    def save_then_crash(payload, path):
        real_save(payload, path)
        if Path(path).name == "last.pt" and payload["step"] == 4:
            raise _Crash  # the machine goes down right after the step-4 checkpoint

    monkeypatch.setattr(engine, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        quiet_train(cfg, tmp_path / "crashed")
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    resumed = quiet_train(cfg, tmp_path / "crashed", resume=True)

    assert resumed["steps"] == straight["steps"] == 8
    assert resumed["losses"] == straight["losses"][4:]  # bit-identical losses after the resume
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "crashed" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, param_state in a["optimizer"]["state"].items():
        for name, value in param_state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    position = ("epoch", "batch_in_epoch")
    assert [a["data"][0][k] for k in position] == [b["data"][0][k] for k in position] == [0, 8]
    a["progress"].pop("elapsed_s"), b["progress"].pop("elapsed_s")  # wall time differs
    assert a["progress"] == b["progress"]  # best scores, early-stopping count, ...
    if sampling:  # two steps without, then a rise over four steps to 0.5, in the train lines
        lines = (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        shares = [r["scheduled_sampling"] for r in records if r["kind"] == "train"]
        assert shares == [0.0, 0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
        plain = quiet_train(tiny_cfg(scenes_annotations, *overrides[:3]), tmp_path / "plain")
        assert plain["losses"][:2] == straight["losses"][:2]  # the same run until it starts
        assert plain["losses"][2] != straight["losses"][2]

    # A resume refuses another architecture, naming the field; a finished run is not overwritten.
    with pytest.raises(UserError, match="model.hidden_size"):
        quiet_train(
            tiny_cfg(scenes_annotations, *overrides, "model.hidden_size=48"),
            tmp_path / "straight",
            resume=True,
        )
    with pytest.raises(UserError, match="--resume to continue it, --overwrite to replace it"):
        quiet_train(cfg, tmp_path / "straight")
    replaced = train(cfg, tmp_path / "straight", quiet=True, overwrite=True)
    assert replaced["losses"] == straight["losses"]  # a fresh run, from step 0
    with pytest.raises(UserError, match="nothing to resume"):
        quiet_train(cfg, tmp_path / "empty", resume=True)


@pytest.mark.parametrize("share,start,ramp", [(0.5, 2, 4), (0.25, 3, 0), (1.0, 0, 1), (0.3, 0, 0)])
def test_scheduled_sampling_waits_for_its_start_then_rises_linearly_to_its_share(
    share, start, ramp
):
    """train.scheduled_sampling_start steps read only references; then the share rises by equal
    steps over scheduled_sampling_ramp_steps steps to train.scheduled_sampling, reached on the
    ramp's last step and kept; a ramp of 0 starts at the full share (it was 0 for good)."""
    settings = dataclasses.replace(
        TrainConfig(),
        scheduled_sampling=share,
        scheduled_sampling_start=start,
        scheduled_sampling_ramp_steps=ramp,
    )
    shares = [scheduled_sampling(settings, step) for step in range(start + ramp + 3)]
    steps = max(ramp, 1)  # to reach the full share, the step at the start included
    assert shares[:start] == [0.0] * start
    rise = [share * k / steps for k in range(1, steps + 1)]
    assert shares[start:] == pytest.approx(rise + [share] * (len(shares) - start - steps))


def test_the_captions_fingerprint_follows_the_captions_and_splits_not_the_paths():
    """What the processes of machines with disks of their own compare before training: the same
    captions in the same splits and order agree wherever the images lie; another caption, another
    split (that image would be trained on by one machine and validated on by another) or another
    order do not."""
    records = [
        ImageRecord("/data/1.png", ("a red circle", "a circle"), "train"),
        ImageRecord("/data/2.png", ("a blue square",), "val"),
    ]
    moved = [dataclasses.replace(r, image_path="/mnt" + r.image_path) for r in records]
    assert captions_fingerprint(moved) == captions_fingerprint(records)
    for other in (
        [dataclasses.replace(records[0], captions=("a red circle",)), records[1]],
        [records[0], dataclasses.replace(records[1], split="train")],
        records[::-1],
    ):
        assert captions_fingerprint(other) != captions_fingerprint(records)


def test_resume_with_another_batch_layout_restarts_the_epoch_and_refuses_what_it_cannot_keep(
    scenes_annotations: Path, tmp_path: Path, capsys
):
    """Stopped at step 7 of 10 steps per epoch (80 pairs / 8), resumed with batches of 16 (5 per
    epoch): the position in the epoch means nothing now, so the epoch starts again with a note
    (it crashed with StopIteration). A resume that changes the optimizer, the trained parts or
    the metric that chose best.pt is refused, naming the field (they crashed mid-run)."""
    run = tmp_path / "run"
    quiet_train(tiny_cfg(scenes_annotations, "train.max_steps=7"), run)
    capsys.readouterr()
    wider = tiny_cfg(scenes_annotations, "train.max_steps=9", "train.batch_size=16")
    summary = train(wider, run, resume=True)
    assert "note: train.batch_size, train.captions_per_image or the training items changed; " \
        "epoch 0 starts again from its first batch" in capsys.readouterr().out  # fmt: skip
    data = load_checkpoint(run / "last.pt")["data"][0]
    assert summary["steps"] == 9 and (data["epoch"], data["batch_in_epoch"]) == (0, 2)
    # at a place the new batches can start from (2 x 16 = 8 x 4), the epoch goes on from there
    halves = tiny_cfg(scenes_annotations, "train.max_steps=11", "train.batch_size=8",
                      "train.grad_accum_steps=2")  # fmt: skip
    summary = train(halves, run, resume=True)
    assert "note: train.batch_size changed from 16 to 8; epoch 0 goes on from the same place " \
        "in its shuffle (batch 5 of 10)" in capsys.readouterr().out  # fmt: skip
    data = load_checkpoint(run / "last.pt")["data"][0]
    assert summary["steps"] == 11 and (data["epoch"], data["batch_in_epoch"]) == (0, 8)
    changes = (
        "train.optimizer=rmsprop",
        "model.finetune=frozen",
        "train.best_metric=cider",
        "train.eval_max_images=1",  # best.pt would compare scores over two validation sets
        "data.image_size=48",
    )  # the last: the encoder's grid, so the attention, changes
    for change in changes:
        key = change.partition("=")[0]
        with pytest.raises(
            UserError, match=rf"cannot resume from .*: {key} is .* in the checkpoint"
        ):
            quiet_train(
                tiny_cfg(scenes_annotations, "train.max_steps=12", change), run, resume=True
            )
    # --init-from takes the weights only: another optimizer or metric is a new run's choice
    started = train(tiny_cfg(scenes_annotations, "train.max_steps=1", "train.optimizer=rmsprop",
                             "train.best_metric=cider"), tmp_path / "new", quiet=True,
                    init_from=run / "last.pt")  # fmt: skip
    assert started["steps"] == 1


def epoch_batches(items: int, batch_size: int, layout: Distributed | None = None) -> EpochBatches:
    """The training batches of ``items`` items (0, 1, ..., as a feature cache serves them), of
    ``batch_size``: this process's share of each in ``layout`` (one process by default)."""
    cfg = dataclasses.replace(
        CaptionerConfig(), train=dataclasses.replace(TrainConfig(), batch_size=batch_size)
    )
    data = SimpleNamespace(train_set=list(range(items)), uses_cache=True, collate=list)
    return EpochBatches(data, cfg, layout or Distributed(), torch.device("cpu"), bad=None)


@pytest.mark.parametrize(
    ("before", "at", "after", "goes_on"),
    [(8, 6, 4, True), (8, 6, 16, True), (4, 9, 8, False), (8, 7, 16, False), (8, 6, 7, False)],
)
def test_another_batch_size_goes_on_from_the_same_place_in_the_shuffle(before, at, after, goes_on):
    """A position saved at batch `at` of batches of `before` items, resumed with batches of
    `after`: where the items taken are a whole number of the new batches (8 -> 4, the README's
    recipe for fewer GPUs with grad_accum_steps 1 -> 2), the epoch goes on with exactly the items
    the old batches had left, in the same order; otherwise it starts again (it always did)."""
    items = 80
    saved = epoch_batches(items, before)
    shuffled = [i for batch in iter(saved) for _, i in batch]
    saved.epoch, saved.batch_in_epoch = 3, at
    resumed = epoch_batches(items, after)
    resumed.load_state_dict(saved.state_dict())
    rest = [i for batch in iter(resumed) for _, i in batch]
    assert resumed.epoch == 3
    if goes_on:
        assert resumed.batch_in_epoch == at * before // after
        assert rest == shuffled[at * before : items // after * after]
    else:
        assert resumed.batch_in_epoch == 0 and rest == shuffled[: items // after * after]


@pytest.mark.parametrize("rank", [0, 1])
def test_fewer_training_items_than_the_batch_are_refused_under_torchrun_only(rank):
    """Fewer training pairs than the batch left one rank of a torchrun job without a share (it
    spun forever): every rank refuses them at the start. One process trains on them."""
    with pytest.raises(UserError) as refused:
        epoch_batches(7, 8, Distributed(rank, 2, rank))
    assert str(refused.value) == (
        "7 training items, fewer than train.batch_size (8): under torchrun every process needs "
        "its share of each batch; lower train.batch_size or use more data"
    )
    assert len(epoch_batches(8, 8, Distributed(rank, 2, rank))) == 1
    assert [len(batch) for batch in epoch_batches(7, 8)] == [7]


@pytest.mark.parametrize(
    ("items", "before", "at", "after", "saved_items"),
    [
        (20, 4, 4, 8, 20),  # 16 items taken: the whole new epoch (2 batches of 8)
        (80, 8, 6, 4, 40),  # the items changed (train.captions_per_image, say)
        (80, 8, 10, 8, None),  # a checkpoint before the layout, its position past the epoch
    ],
)
def test_a_position_that_cannot_go_on_starts_the_epoch_again(items, before, at, after, saved_items):
    """Where the position saved cannot be carried into the new batches (it would end the new
    epoch, the items differ, or an older checkpoint's position does not fit), the epoch's shuffle
    is kept and its batches start again."""
    saved = epoch_batches(saved_items or items, before)
    saved.epoch, saved.batch_in_epoch = 3, at
    state = saved.state_dict()
    if saved_items is None:
        del state["layout"]
    resumed = epoch_batches(items, after)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.batch_in_epoch) == (3, 0)
    assert len(resumed) == resumed.steps_per_epoch == max(1, items // after)


@pytest.mark.parametrize("after", [8, 4])
def test_a_position_before_the_epochs_start_is_a_damaged_checkpoint(after):
    """An edited checkpoint's batch -2 of batches of 8: resumed with batches of 4 it went on from
    batch -3 of 20 (the last 4 batches, then an epoch of 24), with 8 it was taken as it was. No
    run writes it: the engine's "damaged training state" line."""
    saved = epoch_batches(80, 8)
    saved.batch_in_epoch = -2
    with pytest.raises(ValueError, match="before the run's start"):
        epoch_batches(80, after).load_state_dict(saved.state_dict())


def test_a_drawn_split_is_kept_across_a_resume_and_older_checkpoints_are_named(
    scenes_annotations: Path, tmp_path: Path, capsys
):
    """Data without a split column is split by data.split_seed and the fractions: a resume that
    changed one would train on former test or val images, so it is refused, naming the field
    (with a split column they are unused, and free). A checkpoint from before splits were drawn
    by hash cannot be resumed on such data, and `evaluate` says its scores may count images it
    trained on."""
    entries = json.loads(scenes_annotations.read_text())["images"]
    rows = [
        [
            str(scenes_annotations.parent / e["filepath"] / e["filename"]),
            sentence["raw"],
            e["split"],
        ]
        for e in entries
        for sentence in e["sentences"]
    ]
    table, with_split = tmp_path / "captions.csv", tmp_path / "with_split.csv"
    for path, columns in ((table, slice(0, 2)), (with_split, slice(0, 3))):
        with path.open("w", newline="") as file:
            header = ["image", "caption", "split"][columns]
            csv.writer(file).writerows([header, *(row[columns] for row in rows)])
    run = tmp_path / "run"
    csv_cfg = ("data.format=csv", "train.max_steps=2", "train.eval_every=2")
    quiet_train(tiny_cfg(table, *csv_cfg), run)
    for change in ("data.split_seed=1", "data.val_fraction=0.2", "data.test_fraction=0.2"):
        key = change.partition("=")[0]
        with pytest.raises(
            UserError, match=rf"cannot resume from .*: {key} is .* in the checkpoint"
        ):
            quiet_train(tiny_cfg(table, *csv_cfg, "train.max_steps=3", change), run, resume=True)
    assert (
        quiet_train(tiny_cfg(table, *csv_cfg, "train.max_steps=3"), run, resume=True)["steps"] == 3
    )
    given = tmp_path / "given"
    quiet_train(tiny_cfg(with_split, *csv_cfg), given)
    resumed = tiny_cfg(with_split, *csv_cfg, "train.max_steps=3", "data.split_seed=1")
    assert quiet_train(resumed, given, resume=True)["steps"] == 3

    evaluate = ["--checkpoint", str(run / "last.pt"), "--no-meteor", "--json", "--max-images", "1"]
    capsys.readouterr()
    evaluate_module.main(evaluate)
    assert capsys.readouterr().err == ""
    older = load_checkpoint(run / "last.pt")
    del older["split_rule"]
    # another draw of the training images gives another vocabulary too: the split is named first
    vocab = older["vocab"]
    for payload in ({**older, "vocab": [*vocab[:-2], vocab[-1], vocab[-2]]}, older):
        save_checkpoint(payload, run / "last.pt")
        with pytest.raises(UserError) as refused:
            quiet_train(tiny_cfg(table, *csv_cfg, "train.max_steps=4"), run, resume=True)
        assert f"cannot resume from {run / 'last.pt'}: its weights were trained when" in str(
            refused.value
        )
        assert str(refused.value).endswith(
            f"--init-from {run / 'last.pt'} --out-dir ANOTHER_FOLDER"
        )
    evaluate_module.main(evaluate)
    said = capsys.readouterr()
    assert json.loads(said.out)["images"] == 1
    assert said.err.startswith(f"note: {run / 'last.pt'}: its weights were trained when")
    assert said.err.count("\n") == 1 and "may count images it trained on" in said.err
    # not on its own train split, nor on other annotations
    for other in (["--split", "train"], ["--annotations", str(table), "--format", "csv"]):
        evaluate_module.main([*evaluate, *other])
        assert capsys.readouterr().err == ""
    # a run started from those weights (--init-from, as self-critical training is) says so
    started = tmp_path / "started"
    train(tiny_cfg(table, *csv_cfg), started, quiet=True, init_from=run / "last.pt")
    assert load_checkpoint(started / "last.pt")["split_rule"] == OLDER_WEIGHTS
    evaluate_module.main([*evaluate[:1], str(started / "last.pt"), *evaluate[2:]])
    assert "may count images it trained on" in capsys.readouterr().err
    # their ensemble: a note for each member (it said so of the first only)
    evaluate_module.main(["--checkpoint", str(started / "last.pt"), *evaluate])
    notes = capsys.readouterr().err.splitlines()
    assert [line.partition(": its weights")[0] for line in notes] == [
        f"note: {started / 'last.pt'}",
        f"note: {run / 'last.pt'}",
    ]
    assert quiet_train(tiny_cfg(table, *csv_cfg, "train.max_steps=3"), started, resume=True)
    assert load_checkpoint(started / "last.pt")["split_rule"] == OLDER_WEIGHTS
    # data whose file gives the splits: an older checkpoint has nothing to fear
    older = load_checkpoint(given / "last.pt")
    del older["split_rule"]
    save_checkpoint(older, given / "last.pt")
    assert quiet_train(tiny_cfg(with_split, *csv_cfg, "train.max_steps=4"), given, resume=True)
    evaluate_module.main([*evaluate[:1], str(given / "last.pt"), *evaluate[2:]])
    assert capsys.readouterr().err == ""


def _copied(folder: Path, entries: list[dict], copies: Path, split: str) -> Path:
    """Copies of the scene images of ``entries`` in ``copies``, and a CSV there that lists them
    in ``split`` with their first captions: other annotations of some of the same images."""
    copies.mkdir()
    for entry in entries:
        shutil.copy(folder / entry["filename"], copies / entry["filename"])
    table = copies / "captions.csv"
    with table.open("w", newline="") as file:
        rows = [(e["filename"], e["sentences"][0]["raw"], split) for e in entries]
        csv.writer(file).writerows([("image", "caption", "split"), *rows])
    return table


def test_evaluate_notes_images_whose_names_and_sizes_it_trained_on(
    scenes_annotations: Path, tmp_path: Path, capsys
):
    """A checkpoint keeps the file names and sizes of the images it trained on (`trained_names`,
    those of the weights it started from too; export keeps them), so `evaluate` says how many of
    the images it scores it may have trained on, on other annotations (it said nothing) and on
    its own data alike, and a run started from weights that trained on its val or test images
    says so. Another image of the same name (the scenes of another seed) is not counted."""
    entries = json.loads(scenes_annotations.read_text())["images"]
    folder = scenes_annotations.parent / entries[0]["filepath"]
    by_split = {split: [e for e in entries if e["split"] == split] for split in ("train", "test")}
    first = tmp_path / "first"
    quiet_train(tiny_cfg(scenes_annotations, "train.max_steps=1"), first)
    saved = load_checkpoint(first / "last.pt")["trained_names"]
    keys = {split: [image_key(str(folder / e["filename"])) for e in by_split[split]]
            for split in by_split}  # fmt: skip
    assert saved.tolist() == sorted(set(keys["train"]))
    # other annotations (a copy of the images elsewhere): 3 training images, then the test ones
    picked = [*by_split["train"][:3], *by_split["test"]]
    assert len(picked) > 4
    table = _copied(folder, picked, tmp_path / "copies", "test")
    copies = table.parent
    other = ["--annotations", str(table), "--format", "csv", "--no-meteor", "--json"]
    # a run started from weights that had also trained on the test images (as their keys say)
    earlier = load_checkpoint(first / "last.pt")
    earlier["trained_names"] = torch.tensor(sorted({*saved.tolist(), *keys["test"]}))
    save_checkpoint(earlier, tmp_path / "earlier.pt")
    started = tmp_path / "started"
    capsys.readouterr()
    train(tiny_cfg(scenes_annotations, "train.max_steps=1"), started, quiet=True,
          init_from=tmp_path / "earlier.pt")  # fmt: skip
    held_out = sum(e["split"] != "train" for e in entries)
    assert (
        f"note: --init-from {tmp_path / 'earlier.pt'}: {len(keys['test'])} of the {held_out} val "
        "and test images have the file name and size of an image its weights trained on"
    ) in capsys.readouterr().out
    exported = export_checkpoint(started / "last.pt", tmp_path / "exported.pt")
    scored = len(picked)
    own = ["--no-meteor", "--json"]  # its own data's test split
    tests = len(keys["test"])
    for checkpoint, argv, seen, of, like in (
        (first / "last.pt", other, 3, scored, picked[0]),
        (started / "last.pt", other, scored, scored, picked[0]),
        (exported, other, scored, scored, picked[0]),
        (started / "last.pt", own, tests, tests, by_split["test"][0]),
    ):
        capsys.readouterr()
        evaluate_module.main(["--checkpoint", str(checkpoint), *argv])
        said = capsys.readouterr()
        assert json.loads(said.out)["images"] == of
        assert said.err == (
            f"note: {checkpoint}: {seen} of the {of} images have the file name and size of an "
            f"image its weights trained on (like '{like['filename']}'); "
            "these scores may count images it trained on, so score it on images it never saw\n"
        )
    # the val split of other annotations is noted as their test split is (only train's is not)
    table.write_text("image,caption,split\n" + "".join(
        f"{e['filename']},{e['sentences'][0]['raw']},val\n" for e in picked
    ))  # fmt: skip
    evaluate_module.main(["--checkpoint", str(first / "last.pt"), *other, "--split", "val"])
    assert capsys.readouterr().err.startswith(
        f"note: {first / 'last.pt'}: 3 of the {scored} images have the file name and size of an "
    )
    # its own data's test split, and other annotations of images it never saw: nothing to say
    evaluate_module.main(["--checkpoint", str(first / "last.pt"), *own])
    assert capsys.readouterr().err == ""
    table.write_text("image,caption,split\n" + "".join(
        f"{e['filename']},{e['sentences'][0]['raw']},test\n" for e in picked[3:]
    ))  # fmt: skip
    evaluate_module.main(["--checkpoint", str(first / "last.pt"), *other])
    assert capsys.readouterr().err == ""
    # other images under the names of its training images (another seed's scenes): not counted
    for entry in picked[:3]:
        Image.open(copies / entry["filename"]).rotate(90).save(copies / entry["filename"])
    table.write_text("image,caption,split\n" + "".join(
        f"{e['filename']},{e['sentences'][0]['raw']},test\n" for e in picked
    ))  # fmt: skip
    evaluate_module.main(["--checkpoint", str(first / "last.pt"), *other])
    assert capsys.readouterr().err == ""
    # one written before checkpoints kept the names: nothing known
    older = load_checkpoint(first / "last.pt")
    del older["trained_names"]
    assert seen_in_training(older, load_data_records(tiny_cfg(table, "data.format=csv").data)) == []


def test_a_resumed_run_keeps_the_names_of_the_weights_it_started_from(
    scenes_annotations: Path, tmp_path: Path
):
    """--init-from's trained_names outlive a resume of that run: the resume starts from the
    run's own last.pt, which holds them (kills: only the init payload's names kept, which a
    resume has none of)."""
    first = tmp_path / "first"
    train(tiny_cfg(scenes_annotations, "train.max_steps=1"), first, quiet=True)
    earlier = load_checkpoint(first / "last.pt")
    extra = [5, 7]  # the keys of images not in this data
    earlier["trained_names"] = torch.tensor(sorted([*earlier["trained_names"].tolist(), *extra]))
    save_checkpoint(earlier, tmp_path / "earlier.pt")
    started = tmp_path / "started"
    cfg = tiny_cfg(scenes_annotations, "train.max_steps=1")
    train(cfg, started, quiet=True, init_from=tmp_path / "earlier.pt")
    assert set(extra) <= set(load_checkpoint(started / "last.pt")["trained_names"].tolist())
    train(tiny_cfg(scenes_annotations, "train.max_steps=2"), started, resume=True, quiet=True)
    resumed = load_checkpoint(started / "last.pt")
    assert resumed["step"] == 2
    assert resumed["trained_names"].tolist() == earlier["trained_names"].tolist()


def test_evaluate_on_the_train_split_of_other_annotations_says_nothing_of_trained_names(
    scenes_annotations: Path, tmp_path: Path, capsys
):
    """Scoring a train split is no held-out score: no note of images it trained on (kills: the
    `--split train` exception dropped)."""
    entries = json.loads(scenes_annotations.read_text())["images"]
    folder = scenes_annotations.parent / entries[0]["filepath"]
    run = tmp_path / "run"
    train(tiny_cfg(scenes_annotations, "train.max_steps=1"), run, quiet=True)
    picked = [e for e in entries if e["split"] == "train"][:3]
    table = _copied(folder, picked, tmp_path / "copies", "train")
    argv = ["--checkpoint", str(run / "last.pt"), "--annotations", str(table), "--format", "csv",
            "--no-meteor", "--json"]  # fmt: skip
    capsys.readouterr()
    evaluate_module.main([*argv, "--split", "train"])
    said = capsys.readouterr()
    assert json.loads(said.out)["images"] == 3 and said.err == ""
    table.write_text(table.read_text().replace(",train", ",test"))  # the same, held out: noted
    evaluate_module.main(argv)
    assert "3 of the 3 images have the file name and size" in capsys.readouterr().err


def test_trained_names_ignores_earlier_names_of_another_shape_or_type(tmp_path: Path):
    """A tampered checkpoint's trained_names (2-D, 0-D, float) is not taken for names: the run's
    own training images are kept, no traceback (a mutation audit: the dim or dtype check
    dropped). An image that cannot be looked at is left out."""
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x" * 10)
    records = [
        ImageRecord(str(tmp_path / "a.png"), ("x",), "train"),
        ImageRecord(str(tmp_path / "b.png"), ("y",), "val"),
        ImageRecord(str(tmp_path / "gone.png"), ("z",), "train"),
    ]
    own = [image_key(str(tmp_path / "a.png"))]
    assert image_key(str(tmp_path / "gone.png")) is None
    for earlier in (
        torch.tensor([[1, 2]]),
        torch.tensor(3),
        torch.tensor([0.5, 2.0**40]),
        torch.tensor([1, 2], dtype=torch.int32),
    ):
        names = trained_names(records, earlier)
        assert names.dtype == torch.int64 and names.tolist() == own, earlier
    assert trained_names(records, torch.tensor([5, 7])).tolist() == sorted([5, 7, *own])


def test_only_keys_that_leave_the_root_make_the_rule_before_suspect():
    """A key inside the root that merely begins with two dots ('..a.png', a file name) drew the
    same split under both rules (kills: startswith('..') for startswith('../'))."""
    inside = [
        ImageRecord("/d/..a.png", ("x",), "train", drawn=True, split_key="..a.png"),
        ImageRecord("/d/b.png", ("y",), "test", drawn=True, split_key="b.png"),
    ]
    assert older_split({"split_rule": PATHS_OUTSIDE_ABSOLUTE}, inside) is None
    outside = [dataclasses.replace(inside[0], split_key="../d/a.png"), inside[1]]
    assert "(like '../d/a.png')" in older_split({"split_rule": PATHS_OUTSIDE_ABSOLUTE}, outside)


def test_evaluate_on_its_own_data_says_nothing_of_test_images_that_share_a_training_name(
    scenes_annotations: Path, tmp_path: Path, capsys
):
    """A test image in another folder that bears a training image's file name, but other bytes,
    is no note."""
    entries = json.loads(scenes_annotations.read_text())["images"]
    folder = scenes_annotations.parent / entries[0]["filepath"]
    train_names = [e["filename"] for e in entries if e["split"] == "train"]
    rows = []
    for index, entry in enumerate(entries):
        # the test images take training images' names, in a folder of their own
        name = (
            train_names[index % len(train_names)] if entry["split"] == "test" else entry["filename"]
        )
        target = tmp_path / entry["split"] / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(folder / entry["filename"], target)
        rows.append((f"{entry['split']}/{name}", entry["sentences"][0]["raw"], entry["split"]))
    table = tmp_path / "captions.csv"
    with table.open("w", newline="") as file:
        csv.writer(file).writerows([("image", "caption", "split"), *rows])
    run = tmp_path / "run"
    train(tiny_cfg(table, "data.format=csv", "train.max_steps=1"), run, quiet=True)
    capsys.readouterr()
    evaluate_module.main(["--checkpoint", str(run / "last.pt"), "--no-meteor", "--json"])
    said = capsys.readouterr()
    assert json.loads(said.out)["images"] == sum(e["split"] == "test" for e in entries)
    assert said.err == ""


def test_only_drawn_training_images_make_an_older_checkpoint_suspect():
    """COCO's train and val files: the training images come from the train file (not drawn), so
    a checkpoint from before the hashed split never trained on a val or test image; data whose
    training images were drawn (no file gives them) may hold some of its training images in val
    or test, whether the checkpoint predates the rule or started from weights that did."""
    given = [
        ImageRecord("a.jpg", ("x",), "train"),
        ImageRecord("b.jpg", ("y",), "test", drawn=True),
    ]
    drawn = [ImageRecord("a.jpg", ("x",), "train", drawn=True), given[1]]
    assert older_split({}, given) is None
    assert older_split({"split_rule": SPLIT_RULE}, drawn) is None
    assert "were a shuffle of the whole set" in older_split({}, drawn)
    assert "some of the images it trained on are val or test" in older_split({}, drawn)
    # weights started from such a checkpoint: which earlier rule is not known, only that it was
    started = older_split({"split_rule": OLDER_WEIGHTS}, drawn)
    assert started.startswith("its weights started from a checkpoint whose splits of this data")
    assert "may be val or test images here" in started
    # the rule before: only images named outside the image root ('../') drew other splits
    inside = [dataclasses.replace(r, drawn=True, split_key=r.image_path) for r in drawn]
    assert older_split({"split_rule": PATHS_OUTSIDE_ABSOLUTE}, inside) is None
    outside = [inside[0], dataclasses.replace(inside[1], split_key="../images/b.jpg")]
    why = older_split({"split_rule": PATHS_OUTSIDE_ABSOLUTE}, outside)
    assert why.startswith("its weights were trained when the 1 image(s) that the annotations ")
    assert "(like '../images/b.jpg')" in why


def test_rows_named_outside_the_image_root_keep_their_split_when_the_data_moves(
    scenes_annotations: Path, tmp_path: Path, capsys
):
    """Rows relative to the image root that leave it (``../images/a.png``: what `caption --csv`
    writes beside the images' folder) drew their splits from their absolute paths, so copying
    the data elsewhere put training images among the test ones (2 of 11 test images kept). Their
    names as written are the keys now. A checkpoint of the rule before cannot be resumed on such
    rows and `evaluate` notes it; on rows inside the root (the rules agree) it can, silently."""
    entries = json.loads(scenes_annotations.read_text())["images"]
    images = [scenes_annotations.parent / e["filepath"] / e["filename"] for e in entries]
    captions = [e["sentences"][0]["raw"] for e in entries]

    def project(where: Path) -> Path:
        (where / "ann").mkdir(parents=True)
        shutil.copytree(scenes_annotations.parent / entries[0]["filepath"], where / "images")
        table = where / "ann" / "captions.csv"
        with table.open("w", newline="") as file:
            rows = [(f"../images/{p.name}", c) for p, c in zip(images, captions, strict=True)]
            csv.writer(file).writerows([("image", "caption"), *rows])
        return table

    def splits(table: Path) -> dict[str, str]:
        records = load_data_records(tiny_cfg(table, "data.format=csv").data)
        return {Path(r.image_path).name: r.split for r in records}

    first, moved = project(tmp_path / "a"), project(tmp_path / "elsewhere" / "b")
    assert splits(first) == splits(moved) and set(splits(first).values()) == {
        "train",
        "val",
        "test",
    }
    run = tmp_path / "run"
    quiet_train(tiny_cfg(first, "data.format=csv", "train.max_steps=2"), run)
    assert load_checkpoint(run / "last.pt")["split_rule"] == SPLIT_RULE
    older = load_checkpoint(run / "last.pt")
    older["split_rule"] = PATHS_OUTSIDE_ABSOLUTE
    save_checkpoint(older, run / "last.pt")
    resumed = tiny_cfg(first, "data.format=csv", "train.max_steps=3")
    with pytest.raises(
        UserError, match=r"cannot resume from .*: its weights were trained when the"
    ):
        quiet_train(resumed, run, resume=True)
    evaluate = ["--checkpoint", str(run / "last.pt"), "--no-meteor", "--max-images", "1"]
    capsys.readouterr()
    evaluate_module.main(evaluate)
    err = capsys.readouterr().err
    assert err.startswith(f"note: {run / 'last.pt'}: its weights were trained when the ")
    assert "(like '../images/" in err and err.count("\n") == 1
    # rows inside the image root: both rules drew the same splits
    inside = tmp_path / "a" / "images" / "captions.csv"
    inside.write_text(first.read_text().replace("../images/", ""))
    train(tiny_cfg(inside, "data.format=csv", "train.max_steps=2"), run, quiet=True, overwrite=True)
    older = load_checkpoint(run / "last.pt")
    older["split_rule"] = PATHS_OUTSIDE_ABSOLUTE
    save_checkpoint(older, run / "last.pt")
    assert quiet_train(tiny_cfg(inside, "data.format=csv", "train.max_steps=3"), run, resume=True)
    assert load_checkpoint(run / "last.pt")["split_rule"] == SPLIT_RULE
    evaluate_module.main(evaluate)
    assert capsys.readouterr().err == ""


def test_feature_cache_runs_the_encoder_once_per_image(
    scenes_annotations: Path, tmp_path: Path, monkeypatch
):
    cfg = tiny_cfg(
        scenes_annotations,
        "model.finetune=frozen",
        "train.feature_cache=true",
        f"train.feature_cache_dir={tmp_path / 'features'}",
        "train.epochs=2",
    )
    encoded: list[int] = []
    real_forward = ImageEncoder.forward

    def counting_forward(self, images):
        encoded.append(images.size(0))
        return real_forward(self, images)

    monkeypatch.setattr(ImageEncoder, "forward", counting_forward)
    records = load_data_records(cfg.data)
    train_records = select_split(records, "train")
    val_records = select_split(records, "val")[: cfg.train.eval_max_images]

    first = quiet_train(cfg, tmp_path / "first")
    assert first["feature_cache"] and first["epochs"] == 2 and first["steps"] == 20
    assert sum(encoded) == len(train_records) + len(val_records)  # each image exactly once
    assert first["encoded_images"] == sum(encoded)

    encoded.clear()
    second = quiet_train(cfg, tmp_path / "second")  # a later run, same encoder: all from disk
    assert sum(encoded) == 0 and second["encoded_images"] == 0
    assert second["losses"] == first["losses"]  # same seed, same cached features

    # What the cache holds is the frozen encoder's eval-transform output (stored as float16).
    encoded.clear()
    captioner = load_captioner(first["last_checkpoint"])
    cache = FeatureCache(tmp_path / "features", captioner.model.encoder, cfg, captioner.transform)
    assert cache.missing(train_records) == []
    pooled, grid, grid_hw = cache.load(train_records[0])
    image = captioner.transform(load_image(train_records[0].image_path)).unsqueeze(0)
    with torch.no_grad():
        direct = captioner.model.encode(image)
    assert grid_hw == direct.grid_hw and grid.dtype == torch.float16
    torch.testing.assert_close(grid.float(), direct.grid[0], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(pooled.float(), direct.pooled[0], atol=2e-2, rtol=1e-2)


def test_an_encoder_learning_rate_of_0_freezes_the_encoder_batch_norm_included(
    scenes_annotations: Path, tmp_path: Path
):
    """``train.encoder_lr=0`` with a trainable encoder (``model.finetune: all``, as the README's
    self-critical recipe runs it) leaves the encoder as it came, BatchNorm statistics included
    (in training mode they were re-estimated, which moved the val scores), while the decoder
    trains; with ``train.feature_cache`` the features come from the cache. A resume may raise
    the encoder's learning rate again, and the encoder then trains."""
    started = tmp_path / "xe"
    quiet_train(tiny_cfg(scenes_annotations, "train.max_steps=2"), started)
    start = load_checkpoint(started / "last.pt")["model"]

    def encoder(state: dict) -> dict:
        return {key: value for key, value in state.items() if key.startswith("encoder.")}

    for cache in ("false", "true"):
        fixed = tmp_path / f"fixed_{cache}"
        cfg = tiny_cfg(
            scenes_annotations, "train.max_steps=3", "train.encoder_lr=0",
            f"train.feature_cache={cache}",
        )  # fmt: skip
        summary = train(cfg, fixed, quiet=True, init_from=started / "last.pt")
        assert summary["feature_cache"] == (cache == "true")
        state = load_checkpoint(fixed / "last.pt")["model"]
        assert any(key.endswith("running_mean") for key in encoder(state))
        for key, value in encoder(state).items():
            assert torch.equal(value, start[key]), key
        assert not torch.equal(state["decoder.output.weight"], start["decoder.output.weight"])
    # on from the run of cache "true", with the encoder's learning rate of the config
    more = tiny_cfg(scenes_annotations, "train.max_steps=5", "train.feature_cache=true")
    assert not quiet_train(more, fixed, resume=True)["feature_cache"]
    state = load_checkpoint(fixed / "last.pt")["model"]
    assert not torch.equal(
        state["encoder.body.layer2.0.conv1.weight"], start["encoder.body.layer2.0.conv1.weight"]
    )
    assert not torch.equal(
        state["encoder.body.layer1.0.bn1.running_mean"],
        start["encoder.body.layer1.0.bn1.running_mean"],
    )


def _scripted_scores(monkeypatch, bleu4: list[float]) -> list[int]:
    """Make validation return the given BLEU-4 sequence; returns the list of validated steps."""
    calls: list[int] = []
    real = train_module.evaluate_split

    def fake(captioner, records, *args, **kwargs):
        _, predictions = real(captioner, records, *args, **kwargs)  # still decode for real
        value = bleu4[len(calls)]
        calls.append(value)
        scores = {"BLEU-1": 50.0, "BLEU-2": 40.0, "BLEU-3": 30.0, "BLEU-4": value}
        return scores, predictions

    monkeypatch.setattr(train_module, "evaluate_split", fake)
    return calls


def test_best_checkpoint_follows_the_best_bleu4(scenes_annotations: Path, tmp_path, monkeypatch):
    calls = _scripted_scores(monkeypatch, [10.0, 30.0, 20.0, 25.0])
    cfg = tiny_cfg(scenes_annotations, "train.max_steps=4", "train.eval_every=1")
    summary = quiet_train(cfg, tmp_path / "run")
    assert len(calls) == 4 and summary["steps"] == 4
    assert summary["best_bleu4"] == 30.0 and summary["best_step"] == 2
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (best["step"], best["best_scores"]["BLEU-4"]) == (2, 30.0)
    progress = last["progress"]
    assert (last["step"], progress["last_scores"]["BLEU-4"], progress["bad_evals"]) == (4, 25.0, 2)
    assert not torch.equal(
        best["model"]["decoder.output.weight"], last["model"]["decoder.output.weight"]
    )


def test_patience_stops_training(scenes_annotations: Path, tmp_path: Path, monkeypatch):
    calls = _scripted_scores(monkeypatch, [10.0, 30.0, 20.0, 30.0, 40.0, 50.0])
    cfg = tiny_cfg(
        scenes_annotations, "train.max_steps=6", "train.eval_every=1", "train.patience=2"
    )
    summary = quiet_train(cfg, tmp_path / "run")
    # 30 at step 2; 20 and 30 (a tie is no improvement) are two bad validations: stop at step 4.
    assert summary["stop_reason"] == "patience"
    assert summary["steps"] == 4 and len(calls) == 4 and summary["best_step"] == 2
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4


def test_parameter_groups(scenes_annotations: Path):
    cfg = tiny_cfg(scenes_annotations, "model.finetune=last", "model.finetune_stages=1")
    model = CaptionModel(cfg, 20)
    parts = parameter_parts(model, cfg)
    groups = {g["name"]: g for g in engine.parameter_groups(parts, cfg.train.weight_decay)}
    assert set(groups) == {"decoder", "decoder_no_decay", "encoder", "encoder_no_decay"}
    assert (
        groups["encoder"]["lr"] == cfg.train.encoder_lr and groups["decoder"]["lr"] == cfg.train.lr
    )
    assert groups["decoder_no_decay"]["weight_decay"] == 0.0
    in_groups = {id(p) for group in groups.values() for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable  # every trainable parameter once, no frozen one
    assert id(model.encoder.body.layer1[0].conv1.weight) not in in_groups  # layer1 is frozen
    no_decay = {id(p) for p in groups["decoder_no_decay"]["params"]}
    no_decay |= {id(p) for p in groups["encoder_no_decay"]["params"]}
    assert id(model.decoder.embedding.weight) in no_decay
    assert id(model.decoder.output.bias) in no_decay
    assert id(model.encoder.body.layer2[0].bn1.weight) in no_decay
    assert id(model.decoder.output.weight) in {id(p) for p in groups["decoder"]["params"]}


def test_time_budget_stops_with_a_final_validation(scenes_annotations: Path, tmp_path: Path):
    cfg = tiny_cfg(scenes_annotations, "train.time_budget_s=0.000001", "train.epochs=5")
    summary = quiet_train(cfg, tmp_path / "run")
    # The budget is spent before the first step: no step, but still a validation and last.pt.
    assert summary["stop_reason"] == "time_budget" and summary["steps"] == 0
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == 0 and set(last["progress"]["last_scores"]) == {
        "BLEU-1",
        "BLEU-2",
        "BLEU-3",
        "BLEU-4",
    }


def test_augmentation_does_not_depend_on_workers(scenes_annotations: Path, tmp_path: Path):
    # Random crops are drawn per item from (seed, epoch, index): worker processes change nothing.
    losses = []
    for workers in (0, 2):
        cfg = tiny_cfg(scenes_annotations, "train.max_steps=3", f"data.num_workers={workers}")
        losses.append(quiet_train(cfg, tmp_path / f"workers{workers}")["losses"])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("name", ["tiny", "scenes_demo", "flickr8k", "coco"])
def test_configs_mirror_the_dataclass_key_for_key(name: str):
    path = TINY.with_name(f"{name}.yaml")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    expected = to_dict(CaptionerConfig())
    assert raw.keys() == expected.keys()
    for section, fields in expected.items():
        assert set(raw[section]) == set(fields), (section, set(raw[section]) ^ set(fields))
    cfg = load_config(CaptionerConfig, path)  # every value has the right type
    check_config(cfg)
    transform = eval_transform(cfg)  # the weights' preprocessing resolves without a download
    assert f"size=[{cfg.data.image_size}]" in repr(transform)


def test_a_checkpoint_from_before_a_config_key_existed_resumes_and_starts_runs(
    scenes_annotations: Path, tmp_path: Path
):
    """A checkpoint written before model.top_down existed lacks it: it ran without top-down
    attention, so it resumes (exactly as an uninterrupted run) and starts runs with top_down false,
    and one with top_down true is refused naming the key (it was refused as 'model.top_down is
    None in the checkpoint', which no config can match)."""
    cfg = tiny_cfg(scenes_annotations, "train.max_steps=4", "train.lr_decay_steps=6")
    quiet_train(cfg, tmp_path / "old")
    for name in ("last.pt", "best.pt"):
        payload = load_checkpoint(tmp_path / "old" / name)
        del payload["config"]["model"]["top_down"]
        save_checkpoint(payload, tmp_path / "old" / name)
    longer = tiny_cfg(scenes_annotations, "train.max_steps=6", "train.lr_decay_steps=6")
    assert quiet_train(longer, tmp_path / "old", resume=True)["steps"] == 6
    quiet_train(longer, tmp_path / "straight")
    resumed, straight = (load_checkpoint(tmp_path / run / "last.pt") for run in ("old", "straight"))
    assert all(torch.equal(resumed["model"][k], v) for k, v in straight["model"].items())
    assert train(cfg, tmp_path / "new", quiet=True, init_from=tmp_path / "old" / "best.pt")
    top_down = tiny_cfg(scenes_annotations, "train.max_steps=2", "model.top_down=true")
    with pytest.raises(UserError, match="model.top_down is False in the checkpoint but True"):
        train(top_down, tmp_path / "td", quiet=True, init_from=tmp_path / "old" / "best.pt")


def test_an_encoder_learning_rate_of_0_lets_a_batch_hold_one_image(scenes_annotations: Path):
    """With 1 x 1 feature maps a trainable encoder's BatchNorm needs two images a step; a frozen
    one (finetune frozen, or encoder_lr 0) does not."""
    one_by_one = "data.image_size=8"  # 8 px / 2**(2 stages + 1) = 1
    assert _batch_norm_min_images(tiny_cfg(scenes_annotations, one_by_one)) == 2
    frozen = tiny_cfg(scenes_annotations, one_by_one, "train.encoder_lr=0")
    assert _batch_norm_min_images(frozen) == 1
