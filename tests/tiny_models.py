"""Tiny trained models (seconds on a CPU) for the app's tests: what the app lists and loads."""

from __future__ import annotations

from pathlib import Path

from captioner.config import CaptionerConfig
from captioner.train import train as train_captioner
from char_lm.config import CharLMConfig
from char_lm.train import train as train_char_lm
from recurrent.config import load_config

REPO = Path(__file__).resolve().parents[1]
TEXT = "the cat sat on the mat. the dog ate the log.\nthe hen saw the pen.\n" * 12


def train_tiny_captioner(run_dir: Path, annotations: Path, *overrides: str) -> Path:
    """Two steps of configs/captioner/tiny.yaml on ``annotations``; returns best.pt."""
    cfg = load_config(
        CaptionerConfig,
        REPO / "configs/captioner/tiny.yaml",
        [f"data.annotations={annotations}", "train.max_steps=2", "train.eval_max_images=4"]
        + list(overrides),
    )
    summary = train_captioner(cfg, run_dir, quiet=True)
    return Path(summary["best_checkpoint"])


def train_tiny_char_lm(run_dir: Path, text_path: Path, *extra: str, text: str = TEXT) -> Path:
    """Three steps of configs/char_lm/tiny.yaml on ``text`` (written to ``text_path``), with any
    ``extra`` overrides (e.g. "model.cell=gru"); returns best.pt."""
    text_path.write_text(text, encoding="utf-8")
    overrides = [
        f"data.path={text_path}",
        "data.url=",
        "data.sha256=",
        "data.val_fraction=0.1",
        "data.block_size=16",
        "data.batch_size=4",
        "train.max_steps=3",
        "train.eval_every=3",
        "train.eval_batches=1",
        *extra,
    ]
    cfg = load_config(CharLMConfig, REPO / "configs/char_lm/tiny.yaml", overrides)
    return Path(train_char_lm(cfg, run_dir)["best_checkpoint"])
