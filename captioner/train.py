"""Train the CNN -> RNN captioner.

    python -m captioner.scenes --out data/scenes --num-images 2000 --seed 0
    python -m captioner.train --config configs/captioner/scenes_demo.yaml [--set train.epochs=5]
        [--out-dir runs/captioner/scenes_demo] [--resume]

What a run does:

1. loads the annotations (`data.*`), builds the vocabulary from the *train* split's captions only
   (``data.min_word_count``) and a data set of (image, caption) pairs with the train transform;
2. builds `CaptionModel` and AdamW with separate parameter groups: the decoder at ``train.lr``, the
   trainable encoder stages at ``train.encoder_lr``; biases, normalisation weights and embeddings
   get no weight decay. The LR follows `warmup_cosine` under `LambdaLR`, stepped once per batch;
3. trains with gradient clipping and bf16 autocast on CUDA (float32 on the CPU). Every
   ``train.eval_every`` steps (0: after every epoch) it *decodes* the val split (beam search with
   ``decode.*``, at most ``train.eval_max_images`` images; no teacher forcing) and scores BLEU-1..4,
   printing one line: step, epoch, mean train loss since the last validation, BLEU-1..4 (a ``*``
   marks a new best) and the first val image's caption;
4. keeps ``OUT/best.pt`` (the best val BLEU-4 so far; ties broken by BLEU-3, -2, -1, so progress
   counts while BLEU-4 is still 0) and ``OUT/last.pt`` (written at every validation and at the end),
   and stops early after ``train.patience`` validations without a better score.

Length of a run: ``train.max_steps > 0`` trains exactly that many steps (epochs are then ignored);
otherwise ``train.epochs`` epochs, one epoch being every (image, caption) pair once, in batches of
``train.batch_size`` (a last incomplete batch is dropped; each epoch reshuffles). The cosine
schedule spans that many steps. ``train.time_budget_s`` stops earlier when the wall-clock time
spent in training (all runs of a resumed run together) exceeds it, and the cosine then follows
whichever runs out first, steps or time, so a budget-limited run still anneals fully (a run
limited by time is, by nature, not bit-reproducible). Any stop ends with a validation and a
checkpoint.

Frozen encoder (``model.finetune: frozen``) with ``train.feature_cache``: the encoder's features of
every train and val image are computed once with the eval transform and kept on disk
(`captioner.features`, under ``train.feature_cache_dir`` or ``OUT/features``); training then feeds
them straight to the decoder and never runs the CNN again, in this run or later ones.

Checkpoints are one dict (`recurrent.checkpoint.save_checkpoint`, loaded with weights_only=True):

    task "captioner", format_version, config (plain dict), vocab (list of words),
    model (the `CaptionModel` state_dict: "encoder.*" and "decoder.*" keys, the whole network, so
        decoding needs no download), optimizer, scheduler, step, epoch, batch_in_epoch (position in
        the epoch), order_state (the data-order generator's state the epoch's shuffle is drawn
        from), rng (Python and torch generators), best_scores, best_step, bad_validations,
        elapsed_s (training wall time so far), val_scores (of this validation)

``--resume`` continues ``OUT/last.pt`` exactly where it was written: the same batches in the same
order with the same augmentation and dropout draws, so N steps + resume to 2N equals 2N steps run
straight through (on the CPU; CUDA kernels may differ in the last bits). A resume refuses a
checkpoint whose architecture (`captioner.config.ARCHITECTURE_KEYS`) or vocabulary differs.
Random augmentation is drawn per item from (seed, epoch, item), so it does not depend on
``data.num_workers`` or on where the run was resumed.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner.config import ARCHITECTURE_KEYS, CaptionerConfig, check_config
from captioner.data import (
    CaptionGroups,
    CaptionPairs,
    ImageOnly,
    ImageRecord,
    Vocabulary,
    build_transforms,
    collate_groups,
    collate_pairs,
    select_split,
)
from captioner.encoder import ImageFeatures
from captioner.features import (
    FeatureCache,
    FeatureCollate,
    FeatureGroups,
    FeaturePairs,
    features_to,
)
from captioner.inference import Captioner, eval_transform
from captioner.model import CaptionModel
from captioner.scoring import evaluate_split, image_batches, load_data_records
from recurrent.checkpoint import check_same_architecture, load_checkpoint, save_checkpoint
from recurrent.config import add_run_arguments, load_config, run_dir, to_dict
from recurrent.errors import UserError, run_cli
from recurrent.training import (
    autocast,
    pick_device,
    rng_state,
    set_rng_state,
    set_seed,
    warmup_cosine,
)

TASK = "captioner"
SCORE_ORDER = ("BLEU-4", "BLEU-3", "BLEU-2", "BLEU-1")  # what "better" compares, in order
NO_DECAY_MODULES = (
    nn.Embedding,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)


# --------------------------------------------------------------------------------------------
# Pieces


def parameter_groups(model: CaptionModel, cfg: CaptionerConfig) -> list[dict[str, Any]]:
    """AdamW groups: decoder at train.lr, trainable encoder at train.encoder_lr; within each,
    biases, normalisation parameters and embeddings without weight decay (they are not weights
    whose scale regularisation helps; GPT-2 / minGPT do the same)."""
    no_decay = {
        id(param)
        for module in model.modules()
        if isinstance(module, NO_DECAY_MODULES)
        for param in module.parameters(recurse=False)
    }
    groups = []
    for part, lr in (("decoder", cfg.train.lr), ("encoder", cfg.train.encoder_lr)):
        decay, plain = [], []
        for name, param in getattr(model, part).named_parameters():
            if not param.requires_grad:
                continue
            if id(param) in no_decay or name.endswith("bias") or param.ndim < 2:
                plain.append(param)
            else:
                decay.append(param)
        for params, weight_decay, suffix in (
            (decay, cfg.train.weight_decay, ""),
            (plain, 0.0, "_no_decay"),
        ):
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": lr,
                        "weight_decay": weight_decay,
                        "name": part + suffix,
                    }
                )
    return groups


class SeededItems(Dataset):
    """Items keyed ``(epoch, index)``; each is drawn under its own torch seed, so random
    augmentation depends on (seed, epoch, index) only: not on worker processes, nor on where a run
    was resumed. The global generator is left as it was (dropout keeps its own sequence)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue a CUDA seeding with a stack
            # trace per item (~1 ms) and leave the CUDA generator re-seeded after the item
            torch.default_generator.manual_seed(
                ((self.seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63
            )
            return self.dataset[index]


@dataclass
class Progress:
    """Where a run is; all of it goes into the checkpoint so that --resume continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    order_state: Tensor | None = None  # data-order generator state for this epoch's shuffle
    best_scores: dict[str, float] | None = None
    best_step: int = -1
    bad_validations: int = 0
    elapsed_s: float = 0.0  # training wall time of all runs so far
    validated_step: int = -1  # the step of the last validation
    val_scores: dict[str, float] = field(default_factory=dict)


def score_key(scores: dict[str, float]) -> tuple[float, ...]:
    return tuple(scores[name] for name in SCORE_ORDER)


def epoch_batches(num_items: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch's shuffled batches of item indices; an incomplete last batch is dropped (unless
    it is the only one)."""
    order = torch.randperm(num_items, generator=generator).tolist()
    steps = max(1, num_items // batch_size)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class _Data:
    """What the loop iterates over, with or without the feature cache."""

    train_set: Dataset
    collate: Callable
    val_batches: Callable[[Captioner], Iterator[tuple[list[int], ImageFeatures]]]
    uses_cache: bool
    encoded_images: int  # images the feature cache encoded in this run


def _build_data(
    cfg: CaptionerConfig,
    model: CaptionModel,
    vocab: Vocabulary,
    train_records: Sequence[ImageRecord],
    val_records: Sequence[ImageRecord],
    out_dir: Path,
    device: torch.device,
    progress: bool,
) -> _Data:
    max_ids = cfg.data.max_caption_length + 2  # words + <start> + <end>
    eval_tf = eval_transform(cfg)
    batch = cfg.train.batch_size
    if cfg.model.finetune == "frozen" and cfg.train.feature_cache:
        cache_root = (
            Path(cfg.train.feature_cache_dir)
            if cfg.train.feature_cache_dir
            else out_dir / "features"
        )
        cache = FeatureCache(cache_root, model.encoder, cfg, eval_tf)
        encoded = cache.ensure(
            [*train_records, *val_records],
            device=device,
            batch_size=batch,
            num_workers=cfg.data.num_workers,
            progress=progress,
        )
        store = cache.store(train_records)
        if cfg.train.captions_per_image:
            cached = FeatureGroups(
                train_records, vocab, store, cfg.train.captions_per_image, max_length=max_ids
            )
        else:
            cached = FeaturePairs(train_records, vocab, store, max_length=max_ids)
        return _Data(
            SeededItems(cached, cfg.train.seed),  # the same reference picks as CaptionGroups
            FeatureCollate(store, vocab.pad_id),
            lambda captioner: cache.batches(val_records, batch),
            uses_cache=True,
            encoded_images=encoded,
        )
    train_tf = build_transforms(
        cfg.data.image_size,
        train=True,
        weights=cfg.model.weights,
        hflip=cfg.data.hflip,
        arch=cfg.model.encoder,
    )
    if cfg.train.captions_per_image:
        items = CaptionGroups(
            train_records,
            vocab,
            train_tf,
            cfg.train.captions_per_image,
            cache_images=cfg.data.cache_images,
            max_length=max_ids,
        )
        collate = collate_groups
    else:
        items = CaptionPairs(
            train_records, vocab, train_tf, cache_images=cfg.data.cache_images, max_length=max_ids
        )
        collate = collate_pairs
    val_images = ImageOnly(val_records, eval_tf, cache_images=cfg.data.cache_images)
    # Workers would each fill (and then drop) their own copy of the in-memory image cache.
    val_workers = 0 if cfg.data.cache_images else cfg.data.num_workers
    return _Data(
        SeededItems(items, cfg.train.seed),
        collate,
        lambda captioner: image_batches(
            captioner, val_records, batch, num_workers=val_workers, dataset=val_images
        ),
        uses_cache=False,
        encoded_images=0,
    )


def _payload(
    cfg: CaptionerConfig,
    vocab: Vocabulary,
    model: CaptionModel,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    state: Progress,
) -> dict[str, Any]:
    return {
        "task": TASK,
        "config": to_dict(cfg),
        "vocab": vocab.to_list(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": state.step,
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "order_state": state.order_state,
        "rng": rng_state(),
        "best_scores": state.best_scores,
        "best_step": state.best_step,
        "bad_validations": state.bad_validations,
        "elapsed_s": state.elapsed_s,
        "val_scores": state.val_scores,
    }


def _restore(
    payload: dict[str, Any],
    model: CaptionModel,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    path: Path,
) -> Progress:
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        state = Progress(
            step=int(payload["step"]),
            epoch=int(payload["epoch"]),
            batch_in_epoch=int(payload["batch_in_epoch"]),
            order_state=payload["order_state"],
            best_scores=payload["best_scores"],
            best_step=int(payload["best_step"]),
            bad_validations=int(payload["bad_validations"]),
            elapsed_s=float(payload["elapsed_s"]),
            validated_step=int(payload["step"]),
            val_scores=dict(payload.get("val_scores") or {}),
        )
        rng = payload["rng"]
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot resume from {path}: it lacks or has damaged training state ({reason}); "
            "drop --resume to start afresh"
        ) from None
    set_rng_state(rng)
    return state


def train(
    cfg: CaptionerConfig,
    out_dir: str | Path,
    resume: bool = False,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or with `resume`, continue ``out_dir/last.pt``); return a summary dict:

    steps, epochs (fractional), stop_reason, best_bleu4, best_step, best_scores, last_scores,
    losses (per step of this call), final_loss, pairs_per_s ((image, caption) pairs per second of
    step time, validation excluded), images_per_s (images through the encoder per second of step
    time), time_s (this call's wall time), elapsed_s (all runs), device,
    feature_cache (whether used), encoded_images, out_dir, best_checkpoint, last_checkpoint.
    """
    started = time.perf_counter()
    log = log or (lambda line: tqdm.write(line))
    check_config(cfg)
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file; pass a folder for the run")
    if resume and not last_path.is_file():
        raise UserError(
            f"nothing to resume: {last_path} does not exist; drop --resume to start a run"
        )
    if not resume and last_path.exists() and not overwrite:
        raise UserError(
            f"{out_dir} already holds a run ({last_path.name}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out-dir"
        )
    device = pick_device(cfg.train.device)
    set_seed(cfg.train.seed)

    records = load_data_records(cfg.data)
    train_records = select_split(records, "train", source=cfg.data.annotations)
    val_records = select_split(records, "val", source=cfg.data.annotations)
    if cfg.train.eval_max_images:
        val_records = val_records[: cfg.train.eval_max_images]
    vocab = Vocabulary.build(
        (caption for record in train_records for caption in record.captions),
        cfg.data.min_word_count,
    )
    payload = None
    if resume:
        payload = load_checkpoint(last_path, task=TASK)
        check_same_architecture(
            payload.get("config", {}), to_dict(cfg), ARCHITECTURE_KEYS, last_path
        )
        if payload.get("vocab") != vocab.to_list():
            raise UserError(
                f"cannot resume from {last_path}: the training captions now give another "
                f"vocabulary ({len(vocab)} words, the checkpoint has {len(payload.get('vocab') or [])}); "
                "resume with the same data and data.min_word_count"
            )

    model = CaptionModel(cfg, len(vocab), pad_id=vocab.pad_id).to(device)
    data = _build_data(cfg, model, vocab, train_records, val_records, out_dir, device, progress)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.train.lr)
    batch_size = cfg.train.batch_size
    steps_per_epoch = max(1, len(data.train_set) // batch_size)
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    budget_used = {"fraction": 0.0}  # of train.time_budget_s, updated every step

    def lr_multiplier(step: int) -> float:
        # With a time budget the cosine follows whichever runs out first, steps or time, so a
        # budget-limited run still anneals fully.
        step = max(step, int(total_steps * budget_used["fraction"]))
        return warmup_cosine(
            step,
            warmup_steps=cfg.train.warmup_steps,
            total_steps=total_steps,
            min_ratio=cfg.train.min_lr_ratio,
        )

    scheduler = LambdaLR(optimizer, lr_multiplier)
    order = torch.Generator().manual_seed(cfg.train.seed)
    if payload is not None:
        state = _restore(payload, model, optimizer, scheduler, last_path)
        log(f"resumed from {last_path} at step {state.step} (epoch {state.epoch})")
    else:
        state = Progress(order_state=order.get_state())
        out_dir.mkdir(parents=True, exist_ok=True)
    captioner = Captioner(model, vocab, cfg, eval_transform(cfg), device)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    window: list[Tensor] = []  # losses since the last validation (on the device: no sync per step)
    losses: list[float] = []
    pairs_seen, images_seen, step_time = 0, 0, 0.0
    run_start = time.perf_counter()
    elapsed_before = state.elapsed_s

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - run_start

    def flush_losses() -> list[float]:
        values = torch.stack(window).float().tolist() if window else []
        losses.extend(values)
        window.clear()
        return values

    def validate() -> None:
        recent = flush_losses()
        scores, predictions = evaluate_split(
            captioner,
            val_records,
            batch_size=batch_size,
            batches=data.val_batches(captioner),
            coco_metrics=False,
        )
        state.val_scores = scores
        state.validated_step = state.step
        improved = state.best_scores is None or score_key(scores) > score_key(state.best_scores)
        if improved:
            state.best_scores, state.best_step, state.bad_validations = scores, state.step, 0
        else:
            state.bad_validations += 1
        state.elapsed_s = elapsed()
        checkpoint = _payload(cfg, vocab, model, optimizer, scheduler, state)
        if improved:
            save_checkpoint(checkpoint, best_path)
        save_checkpoint(checkpoint, last_path)
        loss_text = f"{sum(recent) / len(recent):.3f}" if recent else "  -  "
        bleu = "/".join(f"{scores[name]:.1f}" for name in reversed(SCORE_ORDER))
        sample = predictions[0]["caption"] if predictions else ""
        mark = "*" if improved else " "
        log(
            f"step {state.step:6d} | epoch {state.epoch + state.batch_in_epoch / steps_per_epoch:5.2f}"
            f" | train loss {loss_text} | val BLEU-1..4 {bleu} {mark}| e.g. {sample!r}"
        )

    def stop_reason() -> str | None:
        if cfg.train.max_steps and state.step >= cfg.train.max_steps:
            return "max_steps"
        if not cfg.train.max_steps and state.epoch >= cfg.train.epochs:
            return "epochs"
        if cfg.train.patience and state.bad_validations >= cfg.train.patience:
            return "patience"
        if cfg.train.time_budget_s and elapsed() >= cfg.train.time_budget_s:
            return "time_budget"
        return None

    bar = tqdm(
        total=total_steps,
        initial=min(state.step, total_steps),
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not progress or None,
    )
    model.train()
    reason = stop_reason()
    try:
        while reason is None:
            order.set_state(state.order_state)
            batches = epoch_batches(len(data.train_set), batch_size, order)
            # SeededItems takes (epoch, index) keys
            batches = [[(state.epoch, index) for index in batch] for batch in batches]
            loader = DataLoader(
                data.train_set,
                batch_sampler=batches[state.batch_in_epoch :],
                collate_fn=data.collate,
                num_workers=cfg.data.num_workers,
                pin_memory=device.type == "cuda",
                generator=torch.Generator(),  # keeps the global generator out of data loading
            )
            tick = time.perf_counter()
            for inputs, captions, lengths in loader:
                captions = captions.to(device, non_blocking=True)
                with autocast(device):
                    if data.uses_cache:
                        features = features_to(inputs, device)
                    else:
                        images = inputs.to(device, non_blocking=True)
                        features = model.encoder(images)
                        images_seen += images.size(0)
                    num_images = features.pooled.size(0)
                    per_image = captions.size(0) // num_images
                    if per_image > 1:  # captions_per_image: caption rows j*k.. are image j's
                        owners = torch.arange(num_images, device=device)
                        features = features.index_select(owners.repeat_interleave(per_image))
                    _, loss = model.decoder(features, captions, lengths)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.train.grad_clip)
                optimizer.step()
                if cfg.train.time_budget_s:
                    budget_used["fraction"] = min(1.0, elapsed() / cfg.train.time_budget_s)
                scheduler.step()
                window.append(loss.detach())
                state.step += 1
                state.batch_in_epoch += 1
                pairs_seen += captions.size(0)
                bar.update(1)
                if cfg.train.log_every and state.step % cfg.train.log_every == 0:
                    bar.set_postfix(
                        loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
                    )
                if state.batch_in_epoch == len(batches):  # the epoch is complete
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    state.order_state = order.get_state()  # the next epoch shuffles from here
                step_time += time.perf_counter() - tick
                epoch_done = state.batch_in_epoch == 0
                if (cfg.train.eval_every and state.step % cfg.train.eval_every == 0) or (
                    not cfg.train.eval_every and epoch_done
                ):
                    validate()
                    model.train()
                reason = stop_reason()
                tick = time.perf_counter()
                if reason is not None:
                    break
    finally:
        bar.close()
    if state.validated_step != state.step:
        validate()  # a final validation and last.pt at the step training stopped
    flush_losses()
    time_s = time.perf_counter() - started
    summary = {
        "steps": state.step,
        "epochs": state.epoch + state.batch_in_epoch / steps_per_epoch,
        "stop_reason": reason,
        "best_bleu4": state.best_scores["BLEU-4"] if state.best_scores else None,
        "best_step": state.best_step,
        "best_scores": state.best_scores,
        "last_scores": state.val_scores,
        "losses": losses,
        "final_loss": losses[-1] if losses else None,
        "pairs_per_s": pairs_seen / step_time if step_time > 0 else 0.0,
        # images through the encoder per second (the feature cache runs none)
        "images_per_s": images_seen / step_time if step_time > 0 else 0.0,
        "time_s": time_s,
        "elapsed_s": state.elapsed_s,
        "device": str(device),
        "feature_cache": data.uses_cache,
        "encoded_images": data.encoded_images,
        "out_dir": str(out_dir),
        "best_checkpoint": str(best_path),
        "last_checkpoint": str(last_path),
    }
    return summary


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m captioner.train",
        description="Train the CNN->RNN image captioner from a YAML config (configs/captioner/).",
    )
    add_run_arguments(parser, "captioner", "configs/captioner/scenes_demo.yaml")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cfg = load_config(CaptionerConfig, args.config, args.overrides)
    out_dir = run_dir("captioner", args.config, args.out_dir)
    summary = train(
        cfg,
        out_dir,
        resume=args.resume,
        progress=not args.quiet,
        log=print if args.quiet else None,
        overwrite=args.overwrite,
    )
    best = summary["best_bleu4"]
    best_text = "n/a" if best is None or math.isnan(best) else f"{best:.2f}"
    print(
        f"done ({summary['stop_reason']}): {summary['steps']} steps, {summary['epochs']:.2f} epochs, "
        f"best val BLEU-4 {best_text} at step {summary['best_step']}, "
        f"{summary['pairs_per_s']:.1f} pairs/s, {summary['images_per_s']:.1f} images/s, "
        f"{summary['time_s']:.0f} s; "
        f"checkpoints: {summary['best_checkpoint']}, {summary['last_checkpoint']}"
    )


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
