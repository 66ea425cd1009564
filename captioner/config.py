"""The captioner's typed config; configs/captioner/*.yaml mirror it key for key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from captioner.scenes import JSON_NAME as SCENES_JSON_NAME
from recurrent.config import check_bounds, data_name, describe_cell
from recurrent.engine import RUN_BOUNDS, RunSettings, check_decay, check_run_settings
from recurrent.errors import UserError


@dataclass
class DataConfig:
    format: Literal["karpathy", "flickr8k", "coco", "aic", "csv", "jsonl"] = "karpathy"
    annotations: str | list[str] = ""  # the annotation file(s) of the format
    image_root: str = ""  # where image paths in the annotations are relative to
    restval_to_train: bool = True  # Karpathy split: fold `restval` into train
    val_fraction: float = 0.05  # hashed split (formats.hashed_split), for data without one
    test_fraction: float = 0.05
    split_seed: int = 0
    image_size: int = 224  # square side after crop
    hflip: bool = False  # off: a flip turns "left of" into "right of"; not with the feature cache
    min_word_count: int = 5  # rarer training words become <unk>
    max_caption_length: int = 50  # training captions are cut to this many words
    cache_images: bool = False  # keep decoded images in memory (small data sets)
    num_workers: int = 0
    # A training image that does not decode: "error" stops the run naming the file; "skip" drops
    # it (with its captions), warns once per file and prints the count at the end.
    bad_images: Literal["error", "skip"] = "error"


@dataclass
class ModelConfig:
    encoder: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet50"
    weights: str | None = None  # None | torchvision name (ResNet50_Weights.DEFAULT) | local file
    encoder_stages: int = 4  # stop after layer1..layer4 (small images need less depth)
    finetune: Literal["frozen", "last", "all"] = "frozen"
    finetune_stages: int = 1  # with finetune=last: how many of the last stages train
    attention: bool = True  # soft attention (Xu et al. 2015) or show-and-tell (Vinyals et al.)
    # with attention: Anderson et al. 2018's top-down decoder (an attention core and a language core)
    top_down: bool = False
    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    backend: Literal["fused", "explicit"] = "fused"
    num_layers: int = 1
    embed_size: int = 256
    hidden_size: int = 512
    attention_size: int = 256
    dropout: float = 0.3
    tied_embeddings: bool = False
    alpha_c: float = 1.0  # weight of the doubly stochastic attention regulariser


@dataclass
class TrainConfig(RunSettings):
    """The run rules shared with char_lm (`recurrent.engine.RunSettings`, see the README's "How a
    run works") with the captioner's defaults, and its own fields."""

    epochs: int = 10  # passes over the training data; max_steps > 0 replaces it
    batch_size: int = 64  # (image, caption) pairs per step; images per step with captions_per_image
    # k > 0: each step encodes batch_size images once and trains on k references of each
    # (self-critical.pytorch's seq_per_img), so the CNN runs once per k captions; an epoch is then
    # every image once (with the feature cache too). 0: one item per (image, caption) pair.
    captions_per_image: int = 0
    lr: float = 4e-4  # decoder
    encoder_lr: float = 1e-4  # trainable encoder stages
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    eval_every: int = 0  # steps between validations; 0: once per epoch
    eval_max_images: int = 0  # 0: the whole val split
    patience: int = 5  # validations without a better best_metric before stopping; 0: never
    feature_cache: bool = True  # frozen encoder: compute features once per image, on disk
    feature_cache_dir: str = ""  # where the cached features live; "": <out_dir>/features
    label_smoothing: float = 0.0  # cross-entropy label smoothing (padding ignored); 0: off
    # scheduled sampling (Bengio et al. 2015): with this probability a word read in cross-entropy
    # training is the model's own draw of the step before instead of the reference's; 0: off
    scheduled_sampling: float = 0.0
    scheduled_sampling_start: int = 0  # the first this many optimizer steps read only references
    # steps over which it rises linearly from 0 to train.scheduled_sampling; 0: at once
    scheduled_sampling_ramp_steps: int = 0
    # xe: cross-entropy on the references; scst: self-critical sequence training (Rennie et al.
    # 2017), the CIDEr-D reward of sampled captions minus a baseline (captioner.scst)
    objective: Literal["xe", "scst"] = "xe"
    # with objective scst, the first scst_from_step steps train with cross-entropy (an XE phase in
    # the same run); 0: self-critical from the first step, on weights from --init-from
    scst_from_step: int = 0
    scst_samples: int = 5  # k captions sampled per image in an SCST step
    # greedy: the greedy caption's reward (Rennie et al.); mean: the mean reward of the other k-1
    # samples (the "new SCST" of self-critical.pytorch; needs k >= 2)
    scst_baseline: Literal["greedy", "mean"] = "greedy"
    best_metric: Literal["bleu4", "cider"] = "bleu4"  # what best.pt keeps: val BLEU-4 or CIDEr-D


@dataclass
class DecodeConfig:
    beam_size: int = 3
    max_length: int = 30
    length_penalty: float = 0.0  # score / length**penalty (0: raw log-probability)
    block_ngram_repeat: int = 0  # N > 0: no N-gram of words twice in a caption; 0: off
    min_length: int = 0  # <end> is not allowed before this many words
    suppress_unk: bool = False  # never emit <unk>
    # diverse beam search (Vijayakumar et al. 2018): the beams split into this many groups, each
    # penalised by diversity_strength for every word the earlier groups chose at the same step
    diversity_groups: int = 1
    diversity_strength: float = 0.0


@dataclass
class CaptionerConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


# Fields that define the network: a checkpoint whose values differ cannot be resumed.
ARCHITECTURE_KEYS = [
    "model.encoder",
    "model.encoder_stages",
    "model.attention",
    "model.top_down",
    "model.cell",
    "model.num_layers",
    "model.embed_size",
    "model.hidden_size",
    "model.attention_size",
    "model.tied_embeddings",
    "data.image_size",
]


# Where each number must lie, in interval notation ("(0, 10]": 0 < lr <= 10), checked by
# `recurrent.config.check_bounds`. The caps on sizes refuse values that would only allocate
# gigabytes and crash; "[0, inf)" is any finite value. Every int and float field has a row.
BOUNDS = {
    **RUN_BOUNDS,
    "data.val_fraction": "[0, 1)",
    "data.test_fraction": "[0, 1)",
    "data.split_seed": "[0, 4294967295]",
    "data.image_size": "[1, 2048]",
    "data.min_word_count": "[1, 1e9]",  # 1 keeps every word (`Vocabulary.build` refuses 0)
    "data.max_caption_length": "[1, 1000]",
    "data.num_workers": "[0, 1024]",
    "model.encoder_stages": "[1, 4]",
    "model.finetune_stages": "[0, 5]",
    "model.num_layers": "[1, 32]",
    "model.embed_size": "[1, 8192]",
    "model.hidden_size": "[1, 8192]",
    "model.attention_size": "[1, 8192]",
    "model.dropout": "[0, 1)",
    # Xu et al. use 1; from about 1e20 the regulariser's gradient overflows float32 at the first
    # step, which the non-finite guard then blamed on train.lr and train.grad_clip
    "model.alpha_c": "[0, 1e6]",
    "train.epochs": "[0, 1e6]",
    "train.batch_size": "[1, 4096]",
    "train.captions_per_image": "[0, 100]",
    "train.encoder_lr": "[0, 10]",
    "train.eval_max_images": "[0, 1e9]",
    "decode.beam_size": "[1, 100]",
    "decode.max_length": "[1, 1000]",
    "decode.length_penalty": "[0, 10]",
    "decode.block_ngram_repeat": "[0, 100]",
    "decode.min_length": "[0, 1000]",
    "decode.diversity_groups": "[1, 100]",
    "decode.diversity_strength": "[0, inf)",
    "train.label_smoothing": "[0, 1)",
    "train.scheduled_sampling": "[0, 1]",
    "train.scheduled_sampling_start": "[0, 1e9]",
    "train.scheduled_sampling_ramp_steps": "[0, 1e9]",
    "train.scst_samples": "[1, 100]",
    "train.scst_from_step": "[0, 1e9]",
}


ENCODER_NAMES = {f"resnet{depth}": f"ResNet-{depth}" for depth in (18, 34, 50, 101, 152)}


def describe_model(model: Mapping[str, Any]) -> str:
    """The model card's architecture line, from the ``model`` section of a config (a dict, as
    checkpoints save it): "ResNet-18 encoder (to layer3, all trained) + soft attention, 1-layer
    LSTM decoder, hidden 256". The trainer records it, and the app shows it for any checkpoint."""
    encoder = ENCODER_NAMES.get(model.get("encoder"), str(model.get("encoder", "CNN")))
    stages, finetune = model.get("encoder_stages"), model.get("finetune")
    details = [f"to layer{stages}"] if isinstance(stages, int) else []
    if finetune == "last":
        count = model.get("finetune_stages")
        many = isinstance(count, int) and count > 1
        details.append(f"last {count} stages trained" if many else "last stage trained")
    elif finetune in ("frozen", "all"):
        details.append("frozen" if finetune == "frozen" else "all trained")
    encoder += " encoder" + (f" ({', '.join(details)})" if details else "")
    attention = " + soft attention" if model.get("attention") else " (show and tell)"
    decoder = f"{describe_cell(model)} decoder"
    if model.get("attention") and model.get("top_down"):
        attention = " + top-down attention"  # an attention core before the decoder's layers
        cell = model.get("cell")
        decoder = f"attention {cell.upper() if isinstance(cell, str) else 'core'} + {decoder}"
    parts = [encoder + attention, decoder]
    if model.get("hidden_size"):
        parts.append(f"hidden {model['hidden_size']}")
    return ", ".join(parts)


def is_scenes_annotations(annotations: Any) -> bool:
    """Whether a captioner's ``data.annotations`` is the synthetic scenes generator's JSON."""
    paths = annotations if isinstance(annotations, list) else [annotations]
    names = [Path(str(path)).name for path in paths if path]
    return bool(names) and all(name == SCENES_JSON_NAME for name in names)


def describe_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """The model card's data, from the ``data`` section of a config (a dict): its name (the first
    annotation file's), path (every annotation file) and whether it is the synthetic scenes (size
    None: the trainer adds the number of images)."""
    annotations = data.get("annotations") or ""
    files = [str(a) for a in annotations] if isinstance(annotations, list) else [str(annotations)]
    synthetic = is_scenes_annotations(annotations)
    if synthetic:
        name = "synthetic scenes (coloured shapes)"
    elif files[0]:
        name = data_name(files[0])
    else:
        name = str(data.get("format") or "unknown")
    return {"name": name, "path": ", ".join(files), "size": None, "unit": "images",
            "synthetic_scenes": synthetic}  # fmt: skip


def check_config(cfg: CaptionerConfig) -> None:
    """Reject settings no run can use, with the key to change."""
    check_bounds(cfg, BOUNDS)
    check_run_settings(cfg.train)
    if cfg.model.finetune != "frozen":  # the encoder's stages that train, at its rate
        check_decay(cfg.train, cfg.train.encoder_lr, "train.encoder_lr")
    check_model(cfg.model)
    if cfg.train.epochs == 0 and cfg.train.max_steps == 0:
        raise UserError("train.epochs and train.max_steps are both 0; set one of them")
    _check_quality_settings(cfg)
    if not cfg.data.annotations:
        raise UserError(
            "data.annotations is empty; set it in the config or with --set data.annotations=PATH"
        )


def check_model(model: ModelConfig) -> None:
    """What the architecture's fields must satisfy together (a training config's, or the one a
    checkpoint records)."""
    if model.top_down and not model.attention:
        raise UserError("model.top_down needs model.attention: true (set both, or neither)")


def _check_quality_settings(cfg: CaptionerConfig) -> None:
    """What the decoding options and the SCST fields must satisfy together (their bounds are in
    BOUNDS)."""
    decode, t = cfg.decode, cfg.train
    if decode.min_length > decode.max_length:
        raise UserError(
            f"decode.min_length ({decode.min_length}) is above decode.max_length "
            f"({decode.max_length}); lower it or raise decode.max_length"
        )
    if decode.beam_size % decode.diversity_groups:
        raise UserError(
            f"decode.beam_size ({decode.beam_size}) must be a multiple of "
            f"decode.diversity_groups ({decode.diversity_groups})"
        )
    if t.objective == "scst" and not t.captions_per_image:
        raise UserError(
            "train.objective=scst samples captions per image, so it trains on images, not "
            "(image, caption) pairs: set train.captions_per_image (4, say)"
        )
    if t.scst_baseline == "mean" and t.scst_samples < 2:
        raise UserError(
            "train.scst_baseline 'mean' averages the other samples of an image, so it needs "
            f"train.scst_samples >= 2, got {t.scst_samples}"
        )
