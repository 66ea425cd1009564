"""train.captions_per_image: each step encodes its images once and trains on k references each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import captioner.train as train_module
from captioner.config import CaptionerConfig
from captioner.data import CaptionGroups, ImageRecord, Vocabulary, collate_groups, select_split
from captioner.encoder import ImageEncoder
from captioner.model import CaptionModel
from captioner.scoring import load_data_records
from recurrent import engine
from recurrent.checkpoint import load_checkpoint
from recurrent.config import load_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "captioner" / "tiny.yaml"


def tiny_cfg(annotations: Path, *overrides: str) -> CaptionerConfig:
    return load_config(CaptionerConfig, TINY, [f"data.annotations={annotations}", *overrides])


def quiet_train(cfg: CaptionerConfig, out_dir: Path, resume: bool = False) -> dict:
    return train_module.train(cfg, out_dir, resume, quiet=True)


def test_groups_draw_distinct_references_then_cycle(tmp_path):
    captions = ("one red", "two green", "three blue")
    records = [ImageRecord(str(tmp_path / "x.png"), captions, "train")]
    vocab = Vocabulary.build(captions)
    for k in (2, 3, 7):
        dataset = CaptionGroups(records, vocab, lambda image: torch.zeros(3, 2, 2), k)
        dataset._images.image = lambda index: None  # no file needed: the transform ignores it
        torch.manual_seed(k)
        _, group = dataset[0]
        drawn = [vocab.decode(ids) for ids in group]
        assert len(drawn) == k
        assert len(set(drawn[:3])) == min(k, 3)  # no repeat before every reference is drawn
        assert all(drawn[i] == drawn[i - 3] for i in range(3, k))  # then the same shuffle again
        torch.manual_seed(k)
        assert [vocab.decode(ids) for ids in dataset[0][1]] == drawn  # seeded: repeatable
    images, padded, lengths = collate_groups([dataset[0], dataset[0]])
    assert images.shape == (2, 3, 2, 2) and padded.shape[0] == lengths.shape[0] == 14


def test_the_references_drawn_are_a_shuffle_by_torchs_generator():
    """`pick_references` against a plain reimplementation: under a seed, the k picks are
    torch.randperm's shuffle of the references, cycled; every reference comes first under
    some seed (not always the first ones)."""
    from captioner.data.datasets import pick_references

    for seed in range(20):
        torch.manual_seed(seed)
        order = torch.randperm(5).tolist()
        torch.manual_seed(seed)
        assert pick_references(5, 7) == [order[i % 5] for i in range(7)], seed
    firsts = set()
    for seed in range(50):
        torch.manual_seed(seed)
        firsts.add(pick_references(5, 2)[0])
    assert firsts == set(range(5))


def test_groups_cut_their_captions_to_max_length_as_pairs_do(tmp_path):
    from captioner.data.datasets import encode_caption

    captions = ("a very red dog runs", "a dog")
    records = [ImageRecord(str(tmp_path / "x.png"), captions, "train")]
    vocab = Vocabulary.build(captions)
    for max_length in (3, 4, 7, None):
        dataset = CaptionGroups(records, vocab, lambda image: torch.zeros(3, 2, 2), 2,
                                max_length=max_length)  # fmt: skip
        dataset._images.image = lambda index: None  # no file needed: the transform ignores it
        _, group = dataset[0]
        expected = sorted(encode_caption(vocab, caption, max_length) for caption in captions)
        assert sorted(ids.tolist() for ids in group) == expected, max_length
    assert encode_caption(vocab, captions[0], 4) == [*vocab.encode(captions[0])[:3], vocab.end_id]


@pytest.mark.parametrize("attention", ["true", "false"])
def test_one_encoder_pass_equals_encoding_every_pair(scenes_annotations: Path, attention: str):
    """k references per image: the image is encoded once, and the decoder's initial state and
    attention keys are computed once and shared by its k caption rows. The losses and every
    gradient equal those of encoding each (image, caption) pair on its own (dropout included:
    the same masks are drawn)."""
    cfg = tiny_cfg(scenes_annotations, f"model.attention={attention}", "model.dropout=0.3")
    torch.manual_seed(0)
    model = CaptionModel(cfg, 20).train()
    images = torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size)
    captions = torch.randint(4, 20, (6, 5))
    captions[:, 0] = 1
    lengths = torch.tensor([5, 3, 4, 5, 2, 5])
    owners = torch.arange(2).repeat_interleave(3)

    def run(*inputs) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)
        logits, loss = model(*inputs, captions, lengths)
        loss.backward()
        return logits, loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.encoder.eval()  # BatchNorm's batch statistics would differ between 2 and 6 images
    once = run(images)
    every = run(images.index_select(0, owners))
    torch.testing.assert_close(once[0], every[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(once[1], every[1], atol=1e-6, rtol=0)
    assert len(once[2]) == len(every[2]) > 0
    for shared, repeated in zip(once[2], every[2], strict=True):
        torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="7 captions do not divide among 2 images"):
        model.decoder(model.encoder(images), torch.ones(7, 5, dtype=torch.long), lengths[:1])


def test_training_encodes_each_image_once_per_epoch(
    scenes_annotations: Path, tmp_path, monkeypatch
):
    cfg = tiny_cfg(
        scenes_annotations, "train.captions_per_image=3", "train.epochs=2", "train.batch_size=4"
    )
    encoded: list[int] = []
    real_forward = ImageEncoder.forward

    def counting_forward(self, images):
        if self.training:  # validation decoding encodes too; count the training passes
            encoded.append(images.size(0))
        return real_forward(self, images)

    monkeypatch.setattr(ImageEncoder, "forward", counting_forward)
    summary = quiet_train(cfg, tmp_path / "run")
    train_images = len(select_split(load_data_records(cfg.data), "train"))
    assert summary["steps"] == 2 * (train_images // 4)
    assert sum(encoded) == 2 * (train_images // 4) * 4  # every image once per epoch, not 3 times
    assert summary["pairs_per_s"] == pytest.approx(3 * summary["images_per_s"])


def test_resume_with_groups_continues_exactly(scenes_annotations: Path, tmp_path, monkeypatch):
    overrides = [
        "train.captions_per_image=3",
        "train.batch_size=4",
        "train.max_steps=6",
        "train.eval_every=3",
        "model.dropout=0.3",
    ]
    cfg = tiny_cfg(scenes_annotations, *overrides)
    straight = quiet_train(cfg, tmp_path / "straight")
    real_save = engine.save_checkpoint

    class Crash(Exception):
        pass

    def save_then_crash(payload, path):
        real_save(payload, path)
        if Path(path).name == "last.pt" and payload["step"] == 3:
            raise Crash

    monkeypatch.setattr(engine, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        quiet_train(cfg, tmp_path / "crashed")
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    resumed = quiet_train(cfg, tmp_path / "crashed", resume=True)
    assert resumed["losses"] == straight["losses"][3:]
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "crashed" / "last.pt")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
