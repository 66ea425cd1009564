"""Caption images with a trained checkpoint: the library API the app, the CLIs and training call.

    captioner = load_captioner("runs/captioner/scenes_demo/best.pt")
    [result] = caption_images(captioner, [load_image("photo.jpg")], beam_size=3)
    result.caption, result.beams, result.attention  # attention: (words, grid_h, grid_w) or None

Decoding is batched beam search (`captioner.decode.beam_search`) without teacher forcing, with the
checkpoint's ``decode`` settings unless the call overrides them (`decode_settings`: beam size,
length, length penalty, n-gram blocking, minimum length, <unk> suppression, diverse beam search).
The checkpoint holds the whole model, encoder included, so nothing is downloaded: the encoder is
built with ``weights=None`` and then receives the saved weights.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor

from captioner.config import BOUNDS, CaptionerConfig, DecodeConfig, check_model
from captioner.data import Vocabulary, build_transforms, join_words, load_image_tensor
from captioner.decode import Caption, beam_search, check_decode_settings, setting_name
from captioner.encoder import ImageFeatures
from captioner.model import CaptionModel
from recurrent.checkpoint import check_state_dict, load_checkpoint
from recurrent.config import Interval, check_bounds, from_dict
from recurrent.errors import UserError, first_line
from recurrent.precision import Precision, trained_in
from recurrent.training import pick_device

if TYPE_CHECKING:
    from captioner.ensemble import EnsembleModel

DEFAULT_BATCH_SIZE = 16
# On a CPU the CNN gets slower per image above a few dozen images at once (its activations outgrow
# the caches: 256 scenes of 96 px at once cost as much per image as one at a time, 32 half as
# much), while beam search keeps gaining from larger batches; so images are encoded in chunks.
CPU_ENCODE_CHUNK = 32


@dataclass
class Captioner:
    """A trained caption model ready to decode: model (eval mode), vocabulary, config, transform.

    The model may be an `EnsembleModel` (`captioner.ensemble.load_ensemble`): it encodes and
    decodes alike, and cfg is then its first member's (decoding settings, precision, data).
    """

    model: CaptionModel | EnsembleModel
    vocab: Vocabulary
    cfg: CaptionerConfig
    transform: Callable[[Image.Image], Tensor]  # PIL image -> (3, S, S), the eval preprocessing
    device: torch.device

    def precision(self) -> Precision:
        """The precision the model was trained in (``train.precision``), where this device runs it
        natively (`Precision.for_inference`)."""
        return Precision.for_inference(self.cfg.train.precision, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Decode in `precision`."""
        return self.precision().autocast()


@dataclass
class CaptionResult:
    """One image's caption.

    caption: the best caption (its words written by `captioner.data.join_words`: spaces
        between them, none between two Chinese or Japanese characters).
    beams: the n best (caption, log-probability) pairs, best first; beams[0][0] == caption.
    attention: for attention models, the weights each word of `caption` gave the image grid,
        (len(words), grid_h, grid_w), each map summing to 1; None for show-and-tell models.
    words: the words of `caption`.
    finished: for each of `beams`, whether it ended with <end>; False where the length limit cut
        it, and then its log-probability lacks the <end> term the others have.
    """

    caption: str
    beams: list[tuple[str, float]]
    attention: Tensor | None
    words: list[str]
    finished: list[bool]


def eval_transform(cfg: CaptionerConfig) -> Callable[[Image.Image], Tensor]:
    """The deterministic preprocessing of ``cfg`` (resize, centre crop, the weights' normalisation).

    A local weights file that is gone does not matter here: its statistics are the architecture's
    default ones, which `build_transforms` uses for any file.
    """
    return build_transforms(
        cfg.data.image_size, train=False, weights=cfg.model.weights, arch=cfg.model.encoder
    )


def saved_config(payload: dict[str, Any], source: str = "checkpoint") -> CaptionerConfig:
    """A loaded checkpoint's config, checked as every reader of the checkpoint checks it (its
    bounds and its model's fields: not the training rules, which a later version may have made
    stricter); a config this version cannot read is a one-line `UserError` naming ``source``."""
    try:
        cfg = from_dict(CaptionerConfig, payload["config"])
        check_bounds(cfg, BOUNDS)
        check_model(cfg.model)
    except KeyError as err:
        raise _lacks(source, err) from None
    except UserError as err:
        raise _does_not_fit(source, err) from None
    return cfg


def _lacks(source: str, err: KeyError) -> UserError:
    return UserError(f"{source} lacks {err}; pass a checkpoint written by captioner.train")


def _does_not_fit(source: str, err: UserError) -> UserError:
    return UserError(f"{source} does not fit this version of the captioner: {err}")


def captioner_from_payload(
    payload: dict[str, Any], device: str | torch.device = "cpu", *, source: str = "checkpoint"
) -> Captioner:
    """Build a `Captioner` from a loaded checkpoint dict (see `captioner.train` for its keys)."""
    cfg = saved_config(payload, source)
    try:
        cfg.train.precision = trained_in(payload)  # what "auto" was where it trained
        vocab = Vocabulary.from_list(payload["vocab"])
        state = payload["model"]
    except KeyError as err:
        raise _lacks(source, err) from None
    except UserError as err:
        raise _does_not_fit(source, err) from None
    device = pick_device(device) if isinstance(device, str) else device
    # weights=None: build the architecture only, the checkpoint brings every weight.
    build_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=None))
    model = CaptionModel(build_cfg, len(vocab), pad_id=vocab.pad_id)
    if isinstance(state, dict):
        check_state_dict(model.state_dict(), state, source)  # names the first tensor that differs
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UserError(
            f"{source}'s weights do not match its config ({first_line(err)}); the file is "
            "damaged or was edited, so retrain"
        ) from None
    model.to(device).eval()
    return Captioner(model, vocab, cfg, eval_transform(cfg), device)


def load_captioner(path: str, device: str | torch.device = "cpu") -> Captioner:
    """Load a captioner checkpoint (``best.pt`` / ``last.pt`` of captioner.train) for decoding.

    A missing, corrupt or foreign file (a char_lm checkpoint, say) is a one-line `UserError`.
    """
    payload = load_checkpoint(path, task="captioner")
    return captioner_from_payload(payload, device, source=str(path))


@torch.no_grad()
def encode_images(
    captioner: Captioner, images: Sequence[Image.Image | torch.Tensor]
) -> ImageFeatures:
    """PIL images (any mode) or RGB uint8 tensors (3, H, W) -> float32 `ImageFeatures` on the
    captioner's device."""
    batch = torch.stack(
        [
            captioner.transform(image.convert("RGB") if isinstance(image, Image.Image) else image)
            for image in images
        ]
    )
    batch = batch.to(captioner.device)  # (B, 3, S, S)
    with captioner.autocast():
        features = captioner.model.encode(batch)
    return ImageFeatures(features.pooled.float(), features.grid.float(), features.grid_hw)


def decode_settings(
    captioner: Captioner,
    *,
    beam_size: int | None = None,
    max_length: int | None = None,
    length_penalty: float | None = None,
    block_ngram_repeat: int | None = None,
    min_length: int | None = None,
    suppress_unk: bool | None = None,
    diversity_groups: int | None = None,
    diversity_strength: float | None = None,
    n_best: int = 1,
) -> DecodeConfig:
    """The checkpoint's ``decode`` settings with every given (not None) value in its place,
    checked: settings no search can use are a `UserError` (see `check_decode_settings`)."""
    given = {
        "beam_size": beam_size,
        "max_length": max_length,
        "length_penalty": length_penalty,
        "block_ngram_repeat": block_ngram_repeat,
        "min_length": min_length,
        "suppress_unk": suppress_unk,
        "diversity_groups": diversity_groups,
        "diversity_strength": diversity_strength,
    }
    for key, value in given.items():  # the config's bounds hold for a flag too (NaN, inf, 10**9)
        interval = Interval.parse(BOUNDS.get(f"decode.{key}", "(-inf, inf)"))
        if value is not None and not isinstance(value, bool) and value not in interval:
            raise UserError(
                f"decoding setting {setting_name(key)} must be in {interval.text}, got {value}"
            )
    settings = dataclasses.replace(
        captioner.cfg.decode, **{key: value for key, value in given.items() if value is not None}
    )
    if diversity_groups is None and settings.beam_size % settings.diversity_groups:
        raise UserError(
            f"the checkpoint's decode.diversity_groups ({settings.diversity_groups}) must divide "
            f"the beam size ({settings.beam_size}); pass --diversity-groups 1 (or another "
            "divisor of the beam)"
        )
    check_decode_settings(
        settings.beam_size,
        settings.max_length,
        n_best,
        block_ngram_repeat=settings.block_ngram_repeat,
        min_length=settings.min_length,
        diversity_groups=settings.diversity_groups,
        diversity_strength=settings.diversity_strength,
    )
    return settings


@torch.no_grad()
def decode_features(
    captioner: Captioner, features: ImageFeatures, settings: DecodeConfig, *, n_best: int = 1
) -> list[list[Caption]]:
    """Beam search with ``settings`` for a batch of image features: one list of `Caption`s per
    image, best first. It runs in the precision the captioner serves in (`Captioner.autocast`), as
    the encoder does. Settings that forbid every caption of an image raise `no_caption_error`
    (they forbid them for every image: captions or scores of empty captions mean nothing)."""
    with captioner.autocast():
        decoded = beam_search(
            captioner.model.decoder,
            features.to(captioner.device),
            beam_size=settings.beam_size,
            max_length=settings.max_length,
            start_id=captioner.vocab.start_id,
            end_id=captioner.vocab.end_id,
            length_penalty=settings.length_penalty,
            n_best=n_best,
            block_ngram_repeat=settings.block_ngram_repeat,
            min_length=settings.min_length,
            suppress_ids=[captioner.vocab.unk_id] if settings.suppress_unk else [],
            diversity_groups=settings.diversity_groups,
            diversity_strength=settings.diversity_strength,
        )
    if any(not beams for beams in decoded):
        raise no_caption_error(settings, len(captioner.vocab))
    return decoded


def no_caption_error(settings: DecodeConfig, vocab_size: int) -> UserError:
    """The settings leave no caption (the constraints forbid every word before <end> may come):
    the same for every image, so decoding stops rather than scoring empty captions."""
    return UserError(
        f"no caption meets these decoding settings (min_length {settings.min_length} with "
        f"block_ngram_repeat {settings.block_ngram_repeat} over a vocabulary of {vocab_size} "
        f"tokens, max_length {settings.max_length}); lower the minimum length or the n-gram "
        "blocking"
    )


def to_result(
    vocab: Vocabulary, beams: Sequence[Caption], grid_hw: tuple[int, int]
) -> CaptionResult:
    """A decoded image's `Caption`s (best first) -> `CaptionResult` (words, maps folded to 2-D)."""
    best = beams[0]
    keep = [token not in (vocab.pad_id, vocab.start_id) for token in best.tokens]
    words = [vocab.token(token) for token, kept in zip(best.tokens, keep, strict=True) if kept]
    attention = None
    if best.attention is not None:
        grid_h, grid_w = grid_hw
        rows = torch.tensor(keep, dtype=torch.bool)
        attention = best.attention.detach().float().cpu()[rows]  # (words, N)
        attention = attention.reshape(len(words), grid_h, grid_w)  # (words, grid_h, grid_w)
    return CaptionResult(
        caption=join_words(words),
        beams=[(vocab.decode(beam.tokens), float(beam.logprob)) for beam in beams],
        attention=attention,
        words=words,
        finished=[beam.finished for beam in beams],
    )


@torch.no_grad()
def caption_images(
    captioner: Captioner,
    images: Sequence[Image.Image | torch.Tensor],
    *,
    beam_size: int | None = None,
    max_length: int | None = None,
    n_best: int = 1,
    length_penalty: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    block_ngram_repeat: int | None = None,
    min_length: int | None = None,
    suppress_unk: bool | None = None,
    diversity_groups: int | None = None,
    diversity_strength: float | None = None,
) -> list[CaptionResult]:
    """Caption PIL images (any size and mode; they are converted to RGB) or RGB uint8 tensors
    (3, H, W), as `load_image_tensor` reads files, with beam search.

    Every setting left at None defaults to the checkpoint's ``decode`` section (see
    `decode_settings`). Beam search runs over ``batch_size`` images at a time; on a CPU the CNN
    encodes them in chunks of at most `CPU_ENCODE_CHUNK`.
    """
    settings = decode_settings(
        captioner,
        beam_size=beam_size,
        max_length=max_length,
        length_penalty=length_penalty,
        block_ngram_repeat=block_ngram_repeat,
        min_length=min_length,
        suppress_unk=suppress_unk,
        diversity_groups=diversity_groups,
        diversity_strength=diversity_strength,
        n_best=n_best,
    )
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    results: list[CaptionResult] = []
    chunk = batch_size if captioner.device.type == "cuda" else min(batch_size, CPU_ENCODE_CHUNK)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        parts = [
            encode_images(captioner, batch[i : i + chunk]) for i in range(0, len(batch), chunk)
        ]
        features = ImageFeatures(
            torch.cat([part.pooled for part in parts]),
            torch.cat([part.grid for part in parts]),
            parts[0].grid_hw,
        )
        decoded = decode_features(captioner, features, settings, n_best=n_best)
        results.extend(to_result(captioner.vocab, beams, features.grid_hw) for beams in decoded)
    return results


# --------------------------------------------------------------------------------------------
# Folders of images


def image_extensions() -> frozenset[str]:
    """Lowercase file extensions (".jpg", ".png", ...) of every format Pillow can open."""
    registered = Image.registered_extensions()
    return frozenset(ext.lower() for ext, fmt in registered.items() if fmt in Image.OPEN)


def find_images(folder_or_glob: str) -> list[str]:
    """The image files (by extension) in a folder, not recursive, or matching a glob pattern
    (``photos/*.jpg``; ``**`` recurses), sorted; [] when there are none."""
    if os.path.isdir(folder_or_glob):
        candidates = [os.path.join(folder_or_glob, name) for name in os.listdir(folder_or_glob)]
    else:
        candidates = glob.glob(folder_or_glob, recursive=True)
    extensions = image_extensions()
    return sorted(
        path
        for path in candidates
        if os.path.splitext(path)[1].lower() in extensions and os.path.isfile(path)
    )


def caption_files(
    captioner: Captioner,
    paths: Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_error: Callable[[str, UserError], None] | None = None,
    **decode: Any,
) -> Iterator[tuple[str, CaptionResult]]:
    """Caption image files batch by batch, yielding `(path, result)` in order as each batch is done.

    Files are read as the data loaders read them (`load_image_tensor`: JPEGs by torchvision's
    decoder, the rest by Pillow). A file that cannot be read (a `UserError`) is passed to
    ``on_error(path, error)`` and skipped; without `on_error` the error is raised. A raised
    `UserError` (``on_error``'s own, or the file's without it) stops the captioning after the
    images before the file are yielded, whatever the batch size: those of its batch too.
    `decode` holds `caption_images`' decoding options (beam_size, max_length, n_best, ...).
    """

    def captioned(batch: list[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, CaptionResult]]:
        if batch:
            images = [image for _, image in batch]
            results = caption_images(captioner, images, batch_size=len(images), **decode)
            yield from zip([path for path, _ in batch], results, strict=True)

    for start in range(0, len(paths), batch_size):
        batch: list[tuple[str, torch.Tensor]] = []
        for path in paths[start : start + batch_size]:
            try:
                batch.append((path, load_image_tensor(path)))
            except UserError as err:
                try:
                    if on_error is None:
                        raise
                    on_error(path, err)
                except UserError:  # a stop: as with a batch of one, the images before it first
                    yield from captioned(batch)
                    raise
        yield from captioned(batch)


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding options both captioning CLIs share (each defaults to the checkpoint's
    ``decode`` setting); read them back with `decode_arguments`."""
    group = parser.add_argument_group("decoding (default: the checkpoint's decode settings)")
    group.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        help="rank captions by log-probability / length**P (0: raw log-probability)",
    )
    group.add_argument(
        "--block-ngram-repeat",
        type=int,
        default=None,
        metavar="N",
        help="no N-gram of words twice in a caption (0: off)",
    )
    group.add_argument(
        "--min-length", type=int, default=None, help="no <end> before this many words (0: off)"
    )
    group.add_argument(
        "--suppress-unk",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="never emit the unknown-word token <unk>",
    )
    group.add_argument(
        "--diversity-groups",
        type=int,
        default=None,
        metavar="G",
        help="diverse beam search: split the beams into G groups (G must divide the beam size)",
    )
    group.add_argument(
        "--diversity-strength",
        type=float,
        default=None,
        help="diverse beam search: penalty per word an earlier group chose at the same step",
    )


def decode_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The options of `add_decode_arguments` as keyword arguments of `decode_settings`."""
    return {
        "length_penalty": args.length_penalty,
        "block_ngram_repeat": args.block_ngram_repeat,
        "min_length": args.min_length,
        "suppress_unk": args.suppress_unk,
        "diversity_groups": args.diversity_groups,
        "diversity_strength": args.diversity_strength,
    }
