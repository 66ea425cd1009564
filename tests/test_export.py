"""Serving copies of checkpoints (the bundled demo models): smaller, and they decode the same."""

from __future__ import annotations

from pathlib import Path

import torch

from captioner.config import CaptionerConfig
from captioner.data import SPLIT_RULE, load_image, load_records
from captioner.inference import caption_images, load_captioner
from captioner.train import train as train_captioner
from char_lm.config import CharLMConfig
from char_lm.generate import generate, load_char_lm
from char_lm.train import train as train_char_lm
from recurrent.checkpoint import export_checkpoint, load_checkpoint
from recurrent.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_exported_char_lm_is_smaller_and_generates_the_same(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40)
    cfg = load_config(
        CharLMConfig,
        ROOT / "configs/char_lm/tiny.yaml",
        [f"data.path={text}", "train.max_steps=30", "model.hidden_size=64"],
    )
    summary = train_char_lm(cfg, tmp_path / "run")
    exported = export_checkpoint(summary["best_checkpoint"], tmp_path / "demo.pt")
    payload = load_checkpoint(exported, task="char_lm")
    assert "optimizer" not in payload and "rng" not in payload
    best = load_checkpoint(summary["best_checkpoint"], task="char_lm")
    for key in ("task", "step", "card", "vocab", "config"):  # what the app shows and loads
        assert payload[key] == best[key], key
    assert all(t.dtype == torch.float16 for t in payload["model"].values() if t.is_floating_point())
    assert exported.stat().st_size < Path(summary["best_checkpoint"]).stat().st_size / 2

    original, vocab, _ = load_char_lm(summary["best_checkpoint"])
    served, served_vocab, _ = load_char_lm(exported)
    assert served_vocab == vocab
    ids = torch.tensor([[vocab.index(c) for c in "the cat sat"]])
    torch.testing.assert_close(served(ids)[0], original(ids)[0], atol=2e-2, rtol=0)
    greedy = {
        name: "".join(generate(model, vocab, "the ", 40, greedy=True))
        for name, model in (("original", original), ("served", served))
    }
    assert greedy["served"] == greedy["original"]


def test_exported_captioner_loads_and_captions(scenes_annotations, tmp_path):
    cfg = load_config(
        CaptionerConfig,
        ROOT / "configs/captioner/tiny.yaml",
        [f"data.annotations={scenes_annotations}", "train.max_steps=3"],
    )
    summary = train_captioner(cfg, tmp_path / "run", quiet=True)
    exported = export_checkpoint(summary["best_checkpoint"], tmp_path / "demo.pt")
    # what evaluation reads from it is kept: the vocabulary and how the data were split
    kept = load_checkpoint(exported)
    assert kept["vocab"] == load_checkpoint(summary["best_checkpoint"])["vocab"]
    assert kept["split_rule"] == SPLIT_RULE
    image = load_image(load_records("karpathy", scenes_annotations, None)[0].image_path)
    original = caption_images(load_captioner(summary["best_checkpoint"]), [image], n_best=2)[0]
    served = caption_images(load_captioner(exported), [image], n_best=2)[0]
    assert served.caption == original.caption
    assert abs(served.beams[0][1] - original.beams[0][1]) < 0.05
