"""Train the CNN -> RNN captioner.

    python -m captioner.scenes --out data/scenes --num-images 2000 --seed 0
    python -m captioner.train --config configs/captioner/scenes_demo.yaml [--set train.epochs=5]
        [--out-dir runs/captioner/scenes_demo] [--resume [auto]] [--overwrite]
    torchrun --standalone --nproc_per_node=2 -m captioner.train --config ...   (several processes)

What a run does:

1. loads the annotations (`data.*`), builds the vocabulary from the *train* split's captions only
   (``data.min_word_count``) and a data set of (image, caption) pairs with the train transform;
2. builds `CaptionModel` and AdamW with the decoder at ``train.lr`` and the trainable encoder
   stages at ``train.encoder_lr`` (weight decay on weight matrices only, the engine's rule); an
   ``encoder_lr`` of 0 freezes the encoder as ``model.finetune: frozen`` does (`encoder_trains`);
3. trains; every ``train.eval_every`` steps (0: after every epoch) it *decodes* the val split
   (beam search with ``decode.*``, at most ``train.eval_max_images`` images; no teacher forcing),
   scores BLEU-1..4 and prints one line with the first val image's caption;
4. keeps ``OUT/best.pt`` (the best val BLEU-4 so far; ties broken by BLEU-3, -2, -1, so progress
   counts while BLEU-4 is still 0) and ``OUT/last.pt``, and stops early after ``train.patience``
   validations without a better score.

Length of a run: ``train.max_steps > 0`` trains exactly that many steps; otherwise
``train.epochs`` epochs, one epoch being every item once in batches of ``train.batch_size`` (an
item is an (image, caption) pair, or with ``train.captions_per_image`` an image with k of its
references; a last incomplete batch is dropped; each epoch reshuffles). Everything else about the
run (schedule, time budget, checkpoints, resume, signals, metrics.jsonl) follows the rules of
`recurrent.engine`, the same for both tasks: see the README's "How a run works". Random
augmentation is drawn per item from (seed, epoch, item), so it does not depend on
``data.num_workers`` or on where the run was resumed.

Frozen encoder (``model.finetune: frozen``, or ``train.encoder_lr: 0``) with
``train.feature_cache``: the encoder's features of every train and val image are computed once with
the eval transform and kept on disk (`captioner.features`, under ``train.feature_cache_dir`` or
``OUT/features``); training then feeds them straight to the decoder and never runs the CNN again,
in this run or later ones.

Self-critical sequence training (``train.objective: scst``, Rennie et al. 2017; `captioner.scst`):
each step samples ``train.scst_samples`` captions per image from the decoder, rewards each with its
CIDEr-D against the image's references (document frequencies from the training references,
computed once), subtracts a baseline (``train.scst_baseline``: the greedy caption's reward, or the
mean of the other samples) and follows the policy gradient. It starts from a cross-entropy
checkpoint (``--init-from PATH``, a new run with that run's weights) or after
``train.scst_from_step`` steps of cross-entropy in the same run. It needs
``train.captions_per_image`` (batches of images); validation still decodes with beam search, and
``train.best_metric: cider`` keeps the best CIDEr-D. metrics.jsonl's train lines then carry
``scst_reward``, ``scst_baseline``, ``scst_repeat_share`` and friends; their ``loss`` is the
policy-gradient loss, not a cross-entropy.

Under torchrun each process trains on its share of every batch (``train.batch_size`` is the global
batch and must divide by the number of processes) and decodes its share of the val images.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner.cider import CiderD
from captioner.config import (
    ARCHITECTURE_KEYS,
    BOUNDS,
    CaptionerConfig,
    TrainConfig,
    check_config,
    describe_data,
    describe_model,
)
from captioner.data import (
    CHECK_DATA,
    OLDER_WEIGHTS,
    SPLIT_RULE,
    BadImage,
    BadImageLog,
    CaptionGroups,
    CaptionPairs,
    DropBadImages,
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
from captioner.inference import Captioner, eval_transform, no_caption_error
from captioner.model import CaptionModel
from captioner.scoring import (
    BEST_METRIC_KEYS,
    BLEU_KEYS,
    evaluate_split,
    image_batches,
    load_data_records,
    older_split,
    score_key,
    seen_note,
    trained_names,
)
from captioner.scst import SelfCritical
from recurrent.config import add_run_arguments, load_config, run_dir, run_options, to_dict
from recurrent.distributed import Distributed, finish
from recurrent.engine import Resume, Run, StepResult
from recurrent.errors import (
    TRAINING_STOPPED,
    ArgumentParser,
    UserError,
    loader_workers,
    run_cli,
)

TASK = "captioner"
# what to lower when a run runs out of memory (`run_cli`'s ``memory``)
MEMORY = (
    "lower train.batch_size (raising train.grad_accum_steps as much keeps each step's batch), "
    "data.image_size, decode.beam_size or the model's size"
)


def encoder_trains(cfg: CaptionerConfig) -> bool:
    """Whether the encoder's weights train: the parts ``model.finetune`` names, at
    ``train.encoder_lr``. With an ``encoder_lr`` of 0 none does, so the encoder runs frozen:
    BatchNorm keeps its statistics (in training mode it would re-estimate them, which moves the
    scores of a run meant to leave the encoder alone), no gradient flows through it, and
    ``train.feature_cache`` keeps its features. Its parts stay in the optimizer at a learning
    rate of 0 with no gradient, so a resume may change ``encoder_lr`` either way."""
    return cfg.model.finetune != "frozen" and cfg.train.encoder_lr > 0


def parameter_parts(
    model: CaptionModel, cfg: CaptionerConfig
) -> list[tuple[str, nn.Module, float]]:
    """The optimizer's parts: the decoder at train.lr, the trainable encoder at train.encoder_lr."""
    return [
        ("decoder", model.decoder, cfg.train.lr),
        ("encoder", model.encoder, cfg.train.encoder_lr),
    ]


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


class WithIndex(Dataset):
    """`dataset`'s items with their index, ``(item, index)``: the batch then names its images
    (their keys in self-critical training's CIDEr-D). A `BadImage` item stays as it is."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return item if isinstance(item, BadImage) else (item, index)


class CollateWithIndex:
    """Collate `WithIndex` items: ``(collate(items), indices (B,) long)``. A class rather than a
    closure, so it pickles for worker processes started by spawn."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
        batch = self.collate([item for item, _ in items])
        return batch, torch.tensor([index for _, index in items], dtype=torch.long)


def epoch_batches(num_items: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch's shuffled batches of item indices; an incomplete last batch is dropped (unless
    it is the only one)."""
    order = torch.randperm(num_items, generator=generator).tolist()
    steps = max(1, num_items // batch_size)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


@dataclass
class _Data:
    """What the loop iterates over, with or without the feature cache."""

    train_set: Dataset
    collate: Callable
    # (captioner, val records) -> (record indices, features) batches of those records
    val_batches: Callable[
        [Captioner, Sequence[ImageRecord]], Iterator[tuple[list[int], ImageFeatures]]
    ]
    uses_cache: bool
    encoded_images: int  # images the feature cache encoded in this run
    # the train records the items index (without the undecodable images the cache left out)
    train_records: Sequence[ImageRecord]


def _build_data(
    cfg: CaptionerConfig,
    model: CaptionModel,
    vocab: Vocabulary,
    train_records: Sequence[ImageRecord],
    val_records: Sequence[ImageRecord],
    out_dir: Path,
    device: torch.device,
    layout: Distributed,
    progress: bool,
    bad_images: BadImageLog,
) -> _Data:
    max_ids = cfg.data.max_caption_length + 2  # words + <start> + <end>
    eval_tf = eval_transform(cfg)
    batch = cfg.train.batch_size
    if not encoder_trains(cfg) and cfg.train.feature_cache:
        cache_root = (
            Path(cfg.train.feature_cache_dir)
            if cfg.train.feature_cache_dir
            else out_dir / "features"
        )
        cache = FeatureCache(cache_root, model.encoder, cfg, eval_tf)
        # Under torchrun the processes that see the same folder (all of them on a shared file
        # system, each machine's own where each has its own disk) encode their shares of the
        # missing images in parallel; the files are written atomically, and all wait until every
        # folder holds the whole cache. Where they cannot tell, each fills what its folder lacks,
        # one process at a time.
        records = [*train_records, *val_records]
        sharing = layout.sharing(cache_root)
        alone = sharing is None or len(sharing) == 1
        encoded = cache.ensure(
            records if sharing is None else records[sharing.index(layout.rank) :: len(sharing)],
            exclusive=alone,  # disjoint shares: no lock between the processes
            device=device,
            batch_size=batch,
            num_workers=cfg.data.num_workers,
            progress=progress,
            bad_images=bad_images,
        )
        encoded = sum(layout.all_gather_objects(encoded))  # also waits for every process
        if encoded and layout.is_main and (others := cache.others()):
            tqdm.write(others)  # a new cache, maybe beside an outdated one
        # data.bad_images=skip: what no process could encode is left out (error stopped above).
        # Where the machines have disks of their own, an image may decode on one and not on
        # another: every process leaves out what any folder lacks, so all train on the same items
        # (record indices: the paths may differ from machine to machine).
        missing = {record.image_path for record in cache.missing(records)}
        here = [at for at, record in enumerate(records) if record.image_path in missing]
        lost = {records[at].image_path for at in set().union(*layout.all_gather_objects(here))}
        for record in val_records:
            if record.image_path in lost:
                where = "" if record.image_path in missing else " on another machine"
                raise UserError(
                    f"val image {record.image_path} does not decode{where}, and validation reads "
                    "every val image; replace it or take it out of the val split"
                )
        bad_images.record(
            BadImage(
                path,
                f"{path} does not decode (found while filling the feature cache)"
                if path in missing
                else f"{path} does not decode on another machine (found while filling its "
                "feature cache)",
            )
            for path in sorted(lost - set(bad_images.paths))
        )
        train_records = [record for record in train_records if record.image_path not in lost]
        store = cache.store(train_records)
        if cfg.train.captions_per_image:
            cached = FeatureGroups(
                train_records, vocab, store, cfg.train.captions_per_image, max_length=max_ids
            )
        else:
            cached = FeaturePairs(train_records, vocab, store, max_length=max_ids)
        return _Data(
            # the same reference picks as CaptionGroups
            SeededItems(WithIndex(cached), cfg.train.seed),
            # the (batch, bad images) shape of the image path
            DropBadImages(CollateWithIndex(FeatureCollate(store, vocab.pad_id))),
            lambda captioner, records: cache.batches(records, batch),
            uses_cache=True,
            encoded_images=encoded,
            train_records=train_records,
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
            mark_bad_images=True,
        )
        collate = collate_groups
    else:
        items = CaptionPairs(
            train_records,
            vocab,
            train_tf,
            cache_images=cfg.data.cache_images,
            max_length=max_ids,
            mark_bad_images=True,
        )
        collate = collate_pairs
    val_images = ImageOnly(val_records, eval_tf, cache_images=cfg.data.cache_images)
    # Workers would each fill (and then drop) their own copy of the in-memory image cache.
    val_workers = 0 if cfg.data.cache_images else cfg.data.num_workers
    return _Data(
        SeededItems(WithIndex(items), cfg.train.seed),
        # undecodable images: data.bad_images, applied by BadImageLog
        DropBadImages(CollateWithIndex(collate)),
        lambda captioner, records: image_batches(
            captioner,
            records,
            batch,
            num_workers=val_workers,
            dataset=val_images if len(records) == len(val_records) else None,
        ),
        uses_cache=False,
        encoded_images=0,
        train_records=train_records,
    )


def _batch_norm_min_images(cfg: CaptionerConfig) -> int:
    """The fewest images a batch through the encoder may hold: a trainable encoder's BatchNorm
    needs two values per channel, and one image whose last feature map is 1 x 1 gives it one."""
    side = math.ceil(cfg.data.image_size / 2 ** (cfg.model.encoder_stages + 1))  # ImageEncoder
    return 2 if encoder_trains(cfg) and side == 1 else 1


def _check_batch_norm(cfg: CaptionerConfig, images_per_step: int) -> None:
    """A trainable encoder's BatchNorm needs two values per channel in a step: one image whose
    last feature map is 1 x 1 gives it one (torch would raise at the first step)."""
    if images_per_step < _batch_norm_min_images(cfg):
        raise UserError(
            f"a training step holds {images_per_step} image per process and the encoder's last "
            f"feature map is 1 x 1 (data.image_size {cfg.data.image_size}, model.encoder_stages "
            f"{cfg.model.encoder_stages}): its BatchNorm cannot normalise one value; raise "
            "train.batch_size or data.image_size, lower model.encoder_stages, or set "
            "model.finetune=frozen"
        )


class EpochBatches:
    """The training batches, epoch after epoch, reshuffled from a seeded generator; this process's
    share of each batch under torchrun. Its position (epoch, batch, the shuffle's generator state)
    is part of the checkpoint, so a resume continues with the very next batch.

    One DataLoader serves the whole run: this object is its batch sampler, and each pass of the
    loader is the rest of the current epoch, so DataLoader workers persist across epochs
    (``persistent_workers``) instead of starting again every epoch.
    """

    def __init__(
        self,
        data: _Data,
        cfg: CaptionerConfig,
        layout: Distributed,
        device: torch.device,
        bad: BadImageLog,
    ) -> None:
        self.data, self.cfg, self.bad = data, cfg, bad
        self.dist, self.device, self.is_main = layout, device, layout.is_main
        # Under torchrun with data.bad_images=skip (images read in the loop), a process whose
        # share of a batch holds only bad images has no step to take: the processes agree, batch
        # by batch, and pass over such a batch together (the others would wait in the gradient
        # all-reduce forever). The feature cache leaves bad images out before the first batch.
        self.agree = layout.enabled and cfg.data.bad_images == "skip" and not data.uses_cache
        # data.bad_images=skip can leave a batch (a process's share) one image, which a trainable
        # encoder's BatchNorm cannot normalise on a 1 x 1 feature map: it is passed over as well
        self.min_images = 1 if data.uses_cache else _batch_norm_min_images(cfg)
        if not len(data.train_set):  # the feature cache left out every image: none decodes
            raise self.nothing_decodes()
        self.rows = layout.shard(cfg.train.batch_size, "train.batch_size")
        if layout.enabled and len(data.train_set) < cfg.train.batch_size:  # a share would be empty
            raise UserError(
                f"{len(data.train_set)} training items, fewer than train.batch_size "
                f"({cfg.train.batch_size}): under torchrun every process needs its share of each "
                "batch; lower train.batch_size or use more data"
            )
        self.order = torch.Generator().manual_seed(cfg.train.seed)
        self.epoch, self.batch_in_epoch = 0, 0
        self.order_state = self.order.get_state()  # the state this epoch's shuffle is drawn from
        self.steps_per_epoch = max(1, len(data.train_set) // cfg.train.batch_size)
        workers = cfg.data.num_workers
        self.loader = DataLoader(
            data.train_set,
            batch_sampler=self,
            collate_fn=data.collate,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),  # keeps the global generator out of data loading
            **loader_workers(workers),  # a group's SIGTERM: this process saves and stops
        )
        self._batches: Iterator | None = None

    def __iter__(self) -> Iterator[list]:
        """The rest of the current epoch's batches (the DataLoader's batch sampler)."""
        self.order.set_state(self.order_state)
        batches = epoch_batches(len(self.data.train_set), self.cfg.train.batch_size, self.order)
        batches = [batch[self.rows] for batch in batches[self.batch_in_epoch :]]
        # SeededItems takes (epoch, index) keys
        batches = [[(self.epoch, index) for index in batch] for batch in batches]
        return iter(batches)

    def __len__(self) -> int:
        return self.batches_to_epoch_end()

    def batches_to_epoch_end(self) -> int:
        """Batches left in this epoch (at least 1): the engine ends an accumulated optimizer
        step with the epoch's last one."""
        return self.steps_per_epoch - self.batch_in_epoch

    def optimizer_steps_left(self, epochs: int, accum: int) -> int:
        """Optimizer steps to the end of epoch `epochs`, taking `accum` batches a step and
        ending each epoch with a step of the batches it has left."""
        if self.epoch >= epochs:
            return 0
        rest_of_this = -(-self.batches_to_epoch_end() // accum)
        return rest_of_this + (epochs - self.epoch - 1) * -(-self.steps_per_epoch // accum)

    def next_batch(self) -> tuple[Any, bool]:
        """The next batch, and whether an epoch ended with it (or with the batches before it that
        data.bad_images=skip emptied entirely, which are passed over). A whole epoch of such
        batches means no training image decodes: that stops the run."""
        epoch_end, empty, lone = False, 0, 0
        while True:
            if self._batches is None:
                self._batches = self.bad.batches(iter(self.loader))
            batch = next(self._batches)
            self.batch_in_epoch += 1
            if self.batch_in_epoch == self.steps_per_epoch:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self.order_state = self.order.get_state()  # the next epoch shuffles from here
                self._batches, epoch_end = None, True
            alone = self.min_images > 1 and batch is not None and batch[0][0].size(0) < 2
            if alone:
                batch = None  # only under data.bad_images=skip (_check_batch_norm checked the rest)
            if self.agree:
                here = torch.tensor([float(batch is None), float(alone)], device=self.device)
                none_any, alone_any = self.dist.all_reduce_sum(here).tolist()
                if none_any:
                    batch = None  # some process has nothing: every process passes over it
                alone = bool(alone_any)
            if batch is not None:
                return batch, epoch_end
            empty, lone = empty + 1, lone + int(alone)
            if empty >= self.steps_per_epoch:
                if lone:  # some images decode, but never two in a batch (share)
                    raise self.lone_images(lone)
                raise self.nothing_decodes("in a whole epoch")

    def close(self) -> None:
        """Stop the loader's worker processes now. With ``persistent_workers`` they would live
        until the garbage collector frees the loader's iterator, and it may free the iterator's
        queues first: torch then waits 5 s for each worker (a pause in a later call of a
        process that trains twice, as a notebook or the tests do)."""
        iterator = getattr(self.loader, "_iterator", None)
        if (shutdown := getattr(iterator, "_shutdown_workers", None)) is not None:
            shutdown()
        self._batches = None

    def nothing_decodes(self, where: str = "") -> UserError:
        return UserError(
            f"no training image decodes{' ' + where if where else ''}: {self.bad.files} "
            f"unreadable image file(s) skipped (data.bad_images=skip); {CHECK_DATA} lists them"
        )

    def lone_images(self, batches: int) -> UserError:
        cfg = self.cfg
        return UserError(
            f"no training step in a whole epoch: {self.bad.files} unreadable image file(s) "
            f"skipped (data.bad_images=skip) left {batches} batch(es) a single image (per "
            "process), which the trainable encoder's BatchNorm cannot normalise on its 1 x 1 last "
            f"feature map (data.image_size {cfg.data.image_size}, model.encoder_stages "
            f"{cfg.model.encoder_stages}); the epoch's other batches had no step to take either; "
            f"{CHECK_DATA} lists the unreadable files"
        )

    def layout(self) -> list[int]:
        """What positions in an epoch mean: the items, the global batch and the steps."""
        return [len(self.data.train_set), self.cfg.train.batch_size, self.steps_per_epoch]

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "order_state": self.order_state,
            "layout": self.layout(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        if self.epoch < 0 or self.batch_in_epoch < 0:  # no run writes it (the engine: one line)
            raise ValueError("a data position before the run's start")
        self.order_state, self._batches = state["order_state"], None
        saved = state.get("layout")  # (checkpoints before it: the position must fit, at least)
        changed = saved is not None and list(saved) != self.layout()
        at = self._carried(saved) if changed else None
        if at is not None:  # another batch size, at one of this one's batch starts
            self.batch_in_epoch = at
            if self.is_main:
                tqdm.write(
                    f"note: train.batch_size changed from {int(saved[1])} to "
                    f"{self.cfg.train.batch_size}; epoch {self.epoch} goes on from the same "
                    f"place in its shuffle (batch {at + 1} of {self.steps_per_epoch})"
                )
        elif changed or self.batch_in_epoch >= self.steps_per_epoch:
            self.batch_in_epoch = 0  # the epoch's shuffle is kept; its batches start again
            if self.is_main:
                tqdm.write(
                    "note: train.batch_size, train.captions_per_image or the training items "
                    f"changed; epoch {self.epoch} starts again from its first batch"
                )

    def _carried(self, saved: Sequence[int]) -> int | None:
        """This batch size's batch at which a position saved with another one lies: the same
        items and shuffle, and the items taken so far a whole number of this size's batches (8
        -> 4 with grad_accum_steps 1 -> 2, the recipe for fewer GPUs, always is). None where the
        position falls inside a batch, at or past the new epoch's end (the epoch starts again),
        or the items differ."""
        items, batch_size = int(saved[0]), int(saved[1])
        taken = self.batch_in_epoch * batch_size
        if items != len(self.data.train_set) or taken % self.cfg.train.batch_size:
            return None
        at = taken // self.cfg.train.batch_size
        return at if at < self.steps_per_epoch else None


def captions_fingerprint(records: Sequence[ImageRecord]) -> str:
    """A digest of the records' splits and captions, not of their images (whose paths differ from
    machine to machine): what processes on machines with disks of their own compare."""
    captions = json.dumps([[record.split, record.captions] for record in records])
    return hashlib.sha256(captions.encode()).hexdigest()


def train(
    cfg: CaptionerConfig,
    out_dir: str | Path,
    resume: Resume = False,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or with `resume`, continue ``out_dir/last.pt``); return the engine's summary plus
    epochs (fractional), best_bleu4, losses (per step of this call), final_loss, pairs_per_s,
    images_per_s (through the encoder; the feature cache runs none), feature_cache and
    encoded_images."""
    check_config(cfg)
    if cfg.data.hflip and cfg.train.feature_cache and not encoder_trains(cfg):
        raise UserError(
            "data.hflip flips training images, but the frozen encoder's feature cache holds each "
            "image's features once, unflipped (the eval transform, without crops either); set "
            "train.feature_cache=false to flip, or data.hflip=false to train from the cache"
        )
    run = Run(
        out_dir,
        task=TASK,
        settings=cfg.train,
        config=to_dict(cfg),
        defaults=to_dict(CaptionerConfig()),  # for an older checkpoint's config
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
        init_from=init_from,
    )
    device = run.device

    # --- data: annotations, the vocabulary of the train split, train items, val images
    records = load_data_records(cfg.data)
    train_records = select_split(records, "train", source=cfg.data.annotations)
    val_records = select_split(records, "val", source=cfg.data.annotations)
    if cfg.train.eval_max_images:
        val_records = val_records[: cfg.train.eval_max_images]
    vocab = Vocabulary.build(
        (c for record in train_records for c in record.captions), cfg.data.min_word_count
    )
    if lacking := vocab.lacks_words(cfg.data.min_word_count):
        raise UserError(lacking)
    decode = cfg.decode
    words = len(vocab) - 3 - int(decode.suppress_unk)  # every id but <pad>, <start>, <end>
    if decode.block_ngram_repeat == 1 and decode.min_length > words:  # validation: no caption
        raise no_caption_error(decode, len(vocab))
    # a resume keeps the trained parts (the optimizer's groups) and what chose best.pt: the
    # metric and the validation images (the split carved from data without one, and how many)
    kept = ["model.finetune", "train.best_metric", "train.eval_max_images"]
    if cfg.model.finetune == "last":
        kept.append("model.finetune_stages")
    if any(record.drawn for record in records):
        kept += ["data.split_seed", "data.val_fraction", "data.test_fraction"]
    run.check_same_data(
        lambda: captions_fingerprint(records), f"the annotations ({cfg.data.annotations})"
    )
    # what the weights have seen of the splits (SPLIT_RULE: only this rule's training images);
    # before the vocabulary is compared: another draw of the training images gives another one
    split_rule = SPLIT_RULE
    if run.payload is not None:
        resumed_rule = run.payload.get("split_rule")
        if resumed_rule != OLDER_WEIGHTS and (why := older_split(run.payload, records)):
            raise UserError(
                f"cannot resume from {run.last_path}: {why}; start a new run from its weights: "
                f"--init-from {run.last_path} --out-dir ANOTHER_FOLDER"
            )
        if resumed_rule == OLDER_WEIGHTS:
            split_rule = OLDER_WEIGHTS
    run.check_resume(ARCHITECTURE_KEYS, vocab.to_list(), "the training captions", kept)
    if (
        run.payload is None
        and run.init_payload is not None
        and (why := older_split(run.init_payload, records))
    ):
        split_rule = OLDER_WEIGHTS
        run.log(
            f"note: --init-from {run.init_path}: {why}; this run's checkpoints say so, and "
            "captioner.evaluate will note it"
        )

    # the file names and sizes of the images its weights have trained on (those it started from
    # too), for rank 0's checkpoints: a `stat` an image, which the other ranks are spared
    names_trained_on = torch.empty(0, dtype=torch.int64)
    if run.dist.is_main:
        earlier = (run.payload or run.init_payload or {}).get("trained_names")
        names_trained_on = trained_names(records, earlier)
    if run.payload is None and run.init_payload is not None and run.dist.is_main:
        held_out = [record for record in records if record.split != "train"]
        if note := seen_note(run.init_payload, held_out, "val and test images"):
            run.log(
                f"note: --init-from {run.init_path}: {note}; their scores may count images it "
                "trained on"
            )

    # --- model, optimizer, data order
    model = CaptionModel(cfg, len(vocab), pad_id=vocab.pad_id).to(device)
    # the weights first: a frozen encoder's feature cache holds the output of the encoder the run
    # trains with (--init-from's or the resumed run's), not of a freshly initialised one
    run.load_weights(model)
    bad_images = BadImageLog(cfg.data.bad_images, warn=run.log)
    data = _build_data(
        cfg,
        model,
        vocab,
        train_records,
        val_records,
        run.out_dir,
        device,
        run.dist,
        not quiet and run.dist.is_main,
        bad_images,
    )
    optimizer = run.optimizer(parameter_parts(model, cfg))
    if not encoder_trains(cfg):  # after the optimizer: its groups stay those of the config
        model.encoder.set_finetune("frozen")
    batches = EpochBatches(data, cfg, run.dist, device, bad=bad_images)
    per_step = min(cfg.train.batch_size, len(data.train_set)) // run.dist.world_size
    _check_batch_norm(cfg, per_step)
    run.restore(model, optimizer, batches)
    captioner = Captioner(model, vocab, cfg, eval_transform(cfg), device)
    counts = {"images": 0, "pairs": 0}
    self_critical = None
    if cfg.train.objective == "scst":
        if not cfg.train.scst_from_step and run.init_path is None and run.payload is None:
            run.log(
                "note: self-critical training from random weights rarely learns; start from a "
                "cross-entropy checkpoint (--init-from PATH) or set train.scst_from_step"
            )
        # CIDEr-D's document frequencies from the training references, once; key = record index
        self_critical = SelfCritical(
            CiderD([record.captions for record in data.train_records]),
            vocab,
            cfg.train.scst_samples,
            cfg.train.scst_baseline,
            cfg.decode.max_length,
            layout=run.dist,
            # validation decodes without <unk> under decode.suppress_unk: so do the policy's samples
            suppress_ids=[vocab.unk_id] if cfg.decode.suppress_unk else [],
        )

    # --- one step and one validation; the engine does the rest
    def step(net: nn.Module) -> StepResult:
        ((inputs, captions, lengths), indices), epoch_end = batches.next_batch()
        if not data.uses_cache:
            inputs = inputs.to(device, non_blocking=True)
            counts["images"] += inputs.size(0)
        else:
            inputs = features_to(inputs, device)
        # self-critical once the cross-entropy phase (train.scst_from_step) is over
        if self_critical is not None and run.progress.step >= cfg.train.scst_from_step:
            keys = indices.tolist()
            loss, figures = net(inputs, self_critical=self_critical.bind(keys))
            pairs = len(keys) * cfg.train.scst_samples  # (image, sampled caption) pairs
            return StepResult(loss, pairs, epoch_end, figures)
        captions = captions.to(device, non_blocking=True)
        words = None
        if run.dist.enabled:  # normalise by the global batch's words (see CaptionDecoder.forward)
            words = (lengths - 1).clamp(min=1).sum().to(device, torch.float32)
            words = run.dist.all_reduce_sum(words) / run.dist.world_size
        sampling = scheduled_sampling(cfg.train, run.progress.step)
        _, loss = net(
            inputs,
            captions,
            lengths,
            words,
            label_smoothing=cfg.train.label_smoothing,
            sampling_prob=sampling,
        )
        counts["pairs"] += captions.size(0)
        figures = {"scheduled_sampling": sampling} if cfg.train.scheduled_sampling else {}
        return StepResult(loss, captions.size(0), epoch_end, figures)

    def validate(net: nn.Module) -> dict[str, float]:
        share = val_records[run.dist.rank :: run.dist.world_size]  # all of them in one process
        scores, predictions = evaluate_split(
            captioner,
            share,
            batch_size=cfg.train.batch_size,
            batches=data.val_batches(captioner, share),
            coco_metrics=False,
            cider=cfg.train.best_metric == "cider",
            layout=run.dist,
        )
        samples["first"] = predictions[0]["caption"] if predictions else ""
        return scores

    samples = {"first": ""}

    def describe(scores: dict[str, float]) -> str:
        epoch = batches.epoch + batches.batch_in_epoch / batches.steps_per_epoch
        bleu = "/".join(f"{scores[name]:.1f}" for name in BLEU_KEYS)
        cider = f", CIDEr-D {scores['CIDEr-D']:.1f}" if "CIDEr-D" in scores else ""
        return f"epoch {epoch:.2f}, val BLEU-1..4 {bleu}{cider}, e.g. {samples['first']!r}"

    architecture = describe_model(to_dict(cfg.model))
    # optimizer steps (of train.grad_accum_steps batches each): those taken, and those left to
    # the last epoch, counted from where this call starts (a resume may change the accumulation)
    total_steps = cfg.train.max_steps or run.progress.step + batches.optimizer_steps_left(
        cfg.train.epochs, cfg.train.grad_accum_steps
    )
    try:
        summary = run.fit(
            model,
            optimizer,
            batches,
            step=step,
            evaluate=validate,
            score_key=lambda scores: score_key(scores, cfg.train.best_metric),
            total_steps=total_steps,
            unit="pairs/s",
            card={"architecture": architecture, "data": data_card(cfg, data.train_records)},
            extra=lambda: {
                "vocab": vocab.to_list(),
                "split_rule": split_rule,
                "trained_names": names_trained_on,
            },
            describe=describe,
            # an epoch is every item once, fewer steps when data.bad_images=skip emptied batches
            finished=lambda: (
                "epochs" if not cfg.train.max_steps and batches.epoch >= cfg.train.epochs else None
            ),
        )
    finally:
        batches.close()
    if batches.agree:  # each process met the bad images of its own shares
        bad_images.combine(run.dist.all_gather_objects((bad_images.items, bad_images.paths)))
    if bad_images.items:
        run.log(bad_images.summary())
    seconds = summary["time_s"]
    best = summary["best_scores"]
    return {
        **summary,
        "epochs": batches.epoch + batches.batch_in_epoch / batches.steps_per_epoch,
        "best_bleu4": best["BLEU-4"] if best else None,
        "best_metric": BEST_METRIC_KEYS[cfg.train.best_metric][0],  # what best.pt is the best of
        "best_score": best[BEST_METRIC_KEYS[cfg.train.best_metric][0]] if best else None,
        "final_loss": summary["losses"][-1] if summary["losses"] else None,
        "pairs_per_s": summary["throughput"],
        "images_per_s": counts["images"] * run.dist.world_size / seconds if seconds > 0 else 0.0,
        "feature_cache": data.uses_cache,
        "encoded_images": data.encoded_images,
        "skipped_items": bad_images.items,
        "skipped_images": list(bad_images.paths),
    }


def scheduled_sampling(t: TrainConfig, step: int) -> float:
    """The probability of reading the model's own word at optimizer step ``step`` (0 for the
    first): 0 before ``t.scheduled_sampling_start``, then rising linearly over
    ``t.scheduled_sampling_ramp_steps`` steps to ``t.scheduled_sampling`` (self-critical.pytorch
    raises its ``ss_prob`` by a fixed amount every few epochs instead)."""
    if step < t.scheduled_sampling_start:
        return 0.0
    ramp = t.scheduled_sampling_ramp_steps
    done = 1.0 if not ramp else min(1.0, (step - t.scheduled_sampling_start + 1) / ramp)
    return t.scheduled_sampling * done


def data_card(cfg: CaptionerConfig, train_records: Sequence[ImageRecord]) -> dict[str, Any]:
    """What the model card says about the training data: the config's description, and the size."""
    return {**describe_data(to_dict(cfg.data)), "size": len(train_records)}


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m captioner.train",
        description="Train the CNN->RNN image captioner from a YAML config (configs/captioner/).",
    )
    add_run_arguments(parser, "captioner", "configs/captioner/scenes_demo.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(CaptionerConfig, args.config, args.overrides, bounds=BOUNDS)
    out_dir = run_dir("captioner", args.config, args.out_dir)
    summary = train(cfg, out_dir, **run_options(args))
    if not summary["is_main"]:
        return
    best = summary["best_score"]
    best_text = "n/a" if best is None or math.isnan(best) else f"{best:.2f}"
    # images through the encoder: with the feature cache the steps run none (it said 0.0 images/s);
    # a call that trained no step ("nothing to do") has no rates
    images = "" if summary["feature_cache"] else f"{summary['images_per_s']:.1f} images/s, "
    rates = f"{summary['pairs_per_s']:.1f} pairs/s, {images}" if summary["losses"] else ""
    print(
        f"done: {summary['steps']} steps (stopped by {summary['stop_reason']}), "
        f"{summary['epochs']:.2f} epochs, best val {summary['best_metric']} {best_text} at step "
        f"{summary['best_step']}, "
        f"{rates}{_seconds(summary)}; checkpoints: "
        f"{summary['best_checkpoint']}, {summary['last_checkpoint']}"
    )


def _seconds(summary: dict) -> str:
    """The run's training time, and this call's where it resumed (its figures per second are
    this call's)."""
    run, call = summary["run_time_s"], summary["time_s"]
    return f"{run:.0f} s" if run == call else f"{run:.0f} s ({call:.0f} s in this call)"


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2; a
    torchrun worker ends through `recurrent.distributed.finish`."""
    stopped = f"{TRAINING_STOPPED} (a feature cache keeps what it filled)"
    raise SystemExit(finish(run_cli(main, stopped=stopped, memory=MEMORY)))


if __name__ == "__main__":
    cli()
