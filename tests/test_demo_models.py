"""The bundled demo models in models/ (what `make app` serves) really work.

- models/scenes_captioner.pt captions 100 freshly drawn scenes (seeds it was never trained on,
  drawn the way the app's "random scene" button draws them) with corpus BLEU-4 >= 80 at beam 3.
- models/shakespeare_char.pt continues a prompt and recorded a validation loss below 1.7 nats/char.

The files are made by `make demo-models`; when they are missing these tests fail (not skip), so a
checkout without them never looks green.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioner.inference import caption_images, load_captioner
from captioner.metrics import bleu_scores
from captioner.scenes import caption_names_objects_correctly, render_random_scene
from char_lm.generate import generate, load_char_lm
from crnn_app.captioning import scene_size
from recurrent.checkpoint import load_checkpoint

MODELS = Path(__file__).resolve().parents[1] / "models"
CAPTIONER = MODELS / "scenes_captioner.pt"
CHAR_LM = MODELS / "shakespeare_char.pt"
NUM_SCENES = 100
FRESH_SEED = 12345  # render_random_scene(int) never draws a training image (those use "seed:i")
MIN_BLEU4 = 80.0
MAX_VAL_LOSS = 1.7  # nats per character on tiny-shakespeare's validation split


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing; run `make demo-models` to create the bundled demo models")
    return path


def test_demo_captioner_captions_fresh_scenes_with_bleu4_over_80() -> None:
    captioner = load_captioner(str(_require(CAPTIONER)))
    first_seed = FRESH_SEED if captioner.cfg.train.seed != FRESH_SEED else FRESH_SEED + 1
    size = scene_size(captioner.cfg.data.image_size)
    scenes = [render_random_scene(first_seed + index, size) for index in range(NUM_SCENES)]
    results = caption_images(captioner, [image for image, _, _ in scenes], beam_size=3)
    hypotheses = [result.caption for result in results]
    references = [captions for _, _, captions in scenes]
    bleu4 = bleu_scores(references, hypotheses)["BLEU-4"]
    correct = sum(
        caption_names_objects_correctly(caption, scene)
        for caption, (_, scene, _) in zip(hypotheses, scenes, strict=True)
    )
    examples = "; ".join(
        f"{h!r} vs {r[0]!r}" for h, r in zip(hypotheses[:3], references[:3], strict=True)
    )
    assert bleu4 >= MIN_BLEU4, (
        f"BLEU-4 {bleu4:.1f} < {MIN_BLEU4} on {NUM_SCENES} fresh scenes "
        f"({correct} name their objects correctly); e.g. {examples}"
    )


def test_demo_char_lm_continues_a_prompt_and_has_low_val_loss() -> None:
    path = _require(CHAR_LM)
    payload = load_checkpoint(path, task="char_lm")
    val_loss = payload.get("best_val_loss")
    assert isinstance(val_loss, float), "the checkpoint records no best_val_loss"
    assert val_loss < MAX_VAL_LOSS, f"validation loss {val_loss:.3f} >= {MAX_VAL_LOSS} nats/char"

    model, vocab, _ = load_char_lm(path)
    prompt = "ROMEO:"
    texts = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(0)
        characters = generate(model, vocab, prompt, 200, temperature=0.8, generator=generator)
        texts.append(prompt + "".join(characters))
    assert texts[0] == texts[1]  # reproducible under a seed
    assert texts[0].startswith(prompt) and len(texts[0]) == len(prompt) + 200
    # a trained Shakespeare model writes words: mostly letters and spaces, with line breaks
    letters = sum(ch.isalpha() or ch in " \n" for ch in texts[0][len(prompt) :])
    assert letters >= 0.85 * 200 and "\n" in texts[0], texts[0]
