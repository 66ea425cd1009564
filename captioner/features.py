"""On-disk cache of a frozen encoder's features, so training runs the CNN once per image, ever.

With ``model.finetune: frozen`` the encoder is a fixed function of the image, so its output never
changes between epochs or runs. `FeatureCache` computes the features of each image once, with
the deterministic *eval* transform (no random crops: augmentation would defeat the cache), and
keeps them on disk in float16, in shards that training reads memory-mapped:

    <cache_dir>/<fingerprint>/meta.json                 what the fingerprint stands for (for people)
    <cache_dir>/<fingerprint>/shards/<name>.npy         float16 (images, 1 + N, C): per image, row 0
                                                        is the pooled vector, rows 1..N the grid
    <cache_dir>/<fingerprint>/shards/<name>.json        {"keys": [image key per row], "grid_hw"}
    <cache_dir>/<fingerprint>/fill.lock                 held while a process fills the cache

- ``fingerprint`` hashes everything the features depend on: the encoder architecture and stages,
  the weights setting, the preprocessing (image size, crop, normalisation: the transform's repr),
  the storage layout and the encoder's actual parameter and buffer values. A different encoder
  never reads another's features, and a changed weights file is noticed even under the same name.
- ``image key`` hashes the image's absolute path, size and modification time, so an edited image is
  encoded again.
- A shard holds up to `SHARD_BYTES` of images (about 1300 ResNet-101 7x7 grids). It is written to a
  temporary name and renamed, then its ``.json`` index is written the same way: a shard counts only
  once its index exists, so an interrupted fill leaves only complete shards, and the next run
  encodes just the images no complete shard holds.
- Several processes may fill one cache at once (the ranks of a torchrun job, two runs sharing
  ``train.feature_cache_dir``): the fill takes an exclusive lock on ``fill.lock`` (``fcntl.flock``),
  so one process encodes while the others wait and then find nothing missing. Processes that fill
  disjoint shares in parallel (``ensure(..., exclusive=False)``) take no lock. Either way, and
  where no lock is available, unique shard names and atomic renames keep every shard whole; an
  image encoded twice is read from the first shard in name order.

Reading: `FeatureCache.store(records)` resolves the records to shard rows once and returns a
`FeatureStore`, whose `read(indices)` gathers a whole batch with one fancy index per shard (rows
sorted for locality), from memory when the set is at most `PRELOAD_BYTES`, else from the
memory-mapped shards (each DataLoader worker maps them itself; the page cache is shared).

Training data sets over the cache, twins of `captioner.data.CaptionGroups` / `CaptionPairs` that
yield ``(image index, captions)`` and leave the features to the batch collate (`FeatureCollate`):

- `FeatureGroups`: one item per image with ``captions_per_image`` references picked by the same
  `captioner.data.datasets.pick_references`, so under the trainer's per-item seeding a cached and
  an uncached run train on the same references in the same batches;
- `FeaturePairs`: one item per (image, caption) pair, in `CaptionPairs`' order.

Captions are held as one flat int32 tensor with offsets (not Python lists), which keeps COCO's 616k
captions in ~30 MB that DataLoader workers share without copying.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info
from tqdm import tqdm

from captioner.config import CaptionerConfig
from captioner.data import BadImageLog, DropBadImages, ImageOnly, ImageRecord, Vocabulary
from captioner.data.datasets import encode_caption, pick_references
from captioner.encoder import ImageEncoder, ImageFeatures
from recurrent.errors import UserError, loader_workers
from recurrent.files import abandoned, atomic_write
from recurrent.precision import Precision

try:  # POSIX: one filling process at a time; elsewhere atomic renames alone keep shards whole
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CACHE_DTYPE = torch.float16  # halves the disk and memory; the decoder computes in float32
PRELOAD_BYTES = 2 * 1024**3  # feature sets up to this size are held in memory
SHARD_BYTES = 256 * 1024**2  # images per shard: as many as fit in this many bytes (at least 1)
LAYOUT = "npy-shards-v1"  # part of the fingerprint: another layout never reads these files


def encoder_fingerprint(encoder: ImageEncoder, cfg: CaptionerConfig, transform: object) -> str:
    """sha256 over the encoder's settings, its preprocessing, the precision it encodes in (the
    training precision, as the frozen encoder would run in an uncached run; bf16 features differ
    from fp32's by about 1%) and its parameter values."""
    digest = hashlib.sha256()
    device = next(encoder.parameters()).device
    settings = {
        "precision": Precision.choose(cfg.train.precision, device).name,
        "encoder": cfg.model.encoder,
        "encoder_stages": cfg.model.encoder_stages,
        "weights": cfg.model.weights,
        "image_size": cfg.data.image_size,
        "transform": repr(transform),
        "dtype": str(CACHE_DTYPE),
        "layout": LAYOUT,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_key(image_path: str) -> str:
    """Hash of the image's path, size and modification time (a changed file gets a new key)."""
    try:
        info = os.stat(image_path)
    except OSError:
        raise UserError(
            f"image '{image_path}' not found; check the data set's image root"
        ) from None
    text = f"{os.path.abspath(image_path)}\0{info.st_size}\0{info.st_mtime_ns}"
    return hashlib.sha1(text.encode()).hexdigest()


def write_shard(
    shard_dir: Path, keys: Sequence[str], rows: np.ndarray, grid_hw: tuple[int, int]
) -> str:
    """Write one complete shard (rows: float16 (images, 1 + N, C)); return its name.

    The ``.npy`` goes first, then the ``.json`` index that makes the shard count; both by rename.
    """
    if rows.dtype != np.float16 or rows.ndim != 3 or rows.shape[0] != len(keys):
        raise ValueError(f"a shard takes float16 (images, 1 + N, C) rows, got {rows.shape}")
    shard_dir.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid():08d}-{uuid.uuid4().hex}"
    atomic_write(shard_dir / f"{name}.npy", lambda handle: np.save(handle, rows))
    index = {"keys": list(keys), "grid_hw": list(grid_hw), "shape": list(rows.shape)}
    atomic_write(
        shard_dir / f"{name}.json", lambda handle: handle.write(json.dumps(index).encode())
    )
    return name


@contextlib.contextmanager
def _fill_lock(directory: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/fill.lock`` (waits for another filling process)."""
    directory.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(directory / "fill.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process to finish filling the feature cache {directory}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


STALE_AFTER_S = 600.0  # a temporary shard unwritten this long, of a writer that is gone, is removed


def _stale(path: Path, now: float) -> bool:
    """Whether a temporary file's writer is gone and it is `_untouched`."""
    return _untouched(path, now) and abandoned(path)


def _untouched(path: Path, now: float) -> bool:
    """Whether `path` was last written over `STALE_AFTER_S` ago (False if it is gone)."""
    try:
        return now - path.stat().st_mtime > STALE_AFTER_S
    except OSError:  # removed meanwhile
        return False


class FeatureCache:
    """The cached features of one encoder (one fingerprint) under `root`.

    `ensure(records)` encodes the images that are not cached yet; `store(records)` gives the
    `FeatureStore` that reads them in batches; `batches(records, batch_size)` yields
    `(record indices, float32 ImageFeatures)` for decoding; `load(record)` reads one image.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        encoder: ImageEncoder,
        cfg: CaptionerConfig,
        transform: Callable[[Any], Tensor],
    ) -> None:
        self.encoder = encoder
        self.cfg = cfg
        self.transform = transform
        self.fingerprint = encoder_fingerprint(encoder, cfg, transform)
        self.dir = Path(root) / self.fingerprint[:20]
        self.shard_dir = self.dir / "shards"
        self._keys: dict[str, str] = {}  # image path -> key, so each file is stat-ed once
        self._index: dict[str, tuple[int, int]] = {}  # key -> (shard number, row)
        self._shards: list[str] = []  # shard names, in name order
        self._grid_hw: tuple[int, int] | None = None
        self._row_shape: tuple[int, int] | None = None  # (1 + N, C)
        self.refresh()

    def key(self, record: ImageRecord) -> str:
        key = self._keys.get(record.image_path)
        if key is None:
            key = self._keys[record.image_path] = image_key(record.image_path)
        return key

    def refresh(self) -> None:
        """Read the indexes of the complete shards on disk (other processes may have added some).
        An index whose ``.npy`` is gone (deleted, or a leftover another process removed) does not
        count: its images are encoded again."""
        names = sorted(
            path.stem
            for path in self.shard_dir.glob("*.json")
            if path.with_suffix(".npy").is_file()
        )
        if names == self._shards:
            return
        index: dict[str, tuple[int, int]] = {}
        for number, name in enumerate(names):
            path = self.shard_dir / f"{name}.json"
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
                keys, grid_hw, shape = info["keys"], tuple(info["grid_hw"]), tuple(info["shape"])
            except (OSError, ValueError, KeyError, TypeError):
                raise UserError(
                    f"feature cache index {path} is damaged; delete {self.dir} and train again"
                ) from None
            if self._row_shape is None:
                self._grid_hw, self._row_shape = (int(grid_hw[0]), int(grid_hw[1])), shape[1:]
            elif shape[1:] != self._row_shape:
                raise UserError(
                    f"feature cache shard {path} holds features of shape {shape[1:]}, the others "
                    f"{self._row_shape}; delete {self.dir} and train again"
                )
            for row, key in enumerate(keys):
                index.setdefault(key, (number, row))  # an image stored twice: the first shard
        self._shards, self._index = names, index

    def missing(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """The records (one per image file) whose features are in no complete shard."""
        self.refresh()
        unique = {self.key(record): record for record in records}
        return [record for key, record in unique.items() if key not in self._index]

    @torch.no_grad()
    def ensure(
        self,
        records: Sequence[ImageRecord],
        *,
        device: torch.device,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
        exclusive: bool = True,
        bad_images: BadImageLog | None = None,
    ) -> int:
        """Encode and store every image of `records` that is not cached; return how many.

        Safe to run from several processes at once (see the module docstring): with `exclusive`
        one fills while the others wait on the lock (`log`, default stderr, says so) and then find
        nothing missing. ``exclusive=False`` takes no lock, for processes that fill disjoint shares
        at the same time, e.g. the ranks of a torchrun job each passing ``records[rank::world]``
        and then meeting at a barrier (unique shard names and atomic renames keep that safe).

        An image that does not decode is given to ``bad_images`` (``data.bad_images``: "error"
        stops with one line naming it, "skip" warns and leaves it out of the cache, so it stays
        `missing`); without it, it raises the loader's `UserError`.
        """
        log = log or (lambda line: print(line, file=sys.stderr))
        self._remove_leftovers(under_lock=False)
        if not self.missing(records):
            return 0  # the common case, without touching the lock
        lock = _fill_lock(self.dir, log) if exclusive else contextlib.nullcontext()
        with lock:
            todo = self.missing(records)  # another process may have filled it while we waited
            if todo:
                if exclusive:
                    self._remove_leftovers(under_lock=True)
                self._write_meta()
                self._encode(todo, device, batch_size, num_workers, progress, bad_images)
                self.refresh()
        return len(todo)

    def _encode(
        self,
        todo: list[ImageRecord],
        device: torch.device,
        batch_size: int,
        num_workers: int,
        progress: bool,
        bad_images: BadImageLog | None = None,
    ) -> None:
        loader = DataLoader(
            ImageOnly(todo, self.transform, mark_bad_images=bad_images is not None),
            collate_fn=DropBadImages(default_collate),  # (batch or None, bad images)
            batch_size=batch_size,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # leaves the global generator (dropout's) untouched
            **loader_workers(num_workers),  # a group's SIGTERM is the main process's to handle
        )
        was_training = self.encoder.training
        self.encoder.eval()
        pending_keys: list[str] = []
        pending_rows: list[np.ndarray] = []
        shard_images = 0
        grid_hw = (0, 0)

        def flush() -> None:
            write_shard(self.shard_dir, pending_keys, np.concatenate(pending_rows), grid_hw)
            pending_keys.clear()
            pending_rows.clear()

        try:
            bar = tqdm(
                total=len(todo), desc="caching features", unit="image", disable=not progress or None
            )
            for batch, bad in loader:
                if bad_images is not None:
                    bad_images.record(bad)
                bar.update(len(bad))
                if batch is None:
                    continue
                images, indices = batch
                with Precision.choose(self.cfg.train.precision, device).autocast():
                    features = self.encoder(images.to(device, non_blocking=True))
                grid_hw = features.grid_hw
                rows = torch.cat([features.pooled.unsqueeze(1), features.grid], dim=1)
                stored = rows.to("cpu", CACHE_DTYPE)  # (B, 1 + N, C)
                if not torch.isfinite(stored).all():
                    raise UserError(
                        f"the frozen encoder's features reach {rows.abs().max().item():.3g}, "
                        f"beyond float16's range ({torch.finfo(CACHE_DTYPE).max:.0f}), so the "
                        "feature cache cannot hold them; use trained encoder weights "
                        "(model.weights) or set train.feature_cache=false"
                    )
                rows = stored.numpy()
                if not shard_images:
                    shard_images = max(1, SHARD_BYTES // rows[0].nbytes)
                for row, index in zip(rows, indices.tolist(), strict=True):
                    pending_keys.append(self.key(todo[index]))
                    pending_rows.append(row[None])
                    if len(pending_keys) == shard_images:
                        flush()
                bar.update(len(indices))
            if pending_keys:
                flush()
            bar.close()
        finally:
            self.encoder.train(was_training)

    def _remove_leftovers(self, *, under_lock: bool) -> None:
        """Delete what an interrupted fill left: the temporary files of writers that are gone
        (`recurrent.files.abandoned`: a process killed mid-write, say a rank of a torchrun job,
        whose fill takes no lock) and untouched for `STALE_AFTER_S` (a live writer in another
        process namespace of the same host name, a container, looks gone but keeps writing),
        and, ``under_lock`` (no other process is writing), every temporary file and the shard
        data whose index was never written; without the lock, such data only once untouched for
        `STALE_AFTER_S` too (its writer renames the index a moment after the data)."""
        if not self.shard_dir.is_dir():
            return
        under_lock = under_lock and fcntl is not None  # no lock on Windows
        now = time.time()
        for path in self.shard_dir.iterdir():
            orphan = path.suffix == ".npy" and not path.with_suffix(".json").exists()
            if path.name.endswith(".tmp") and (under_lock or _stale(path, now)):
                path.unlink(missing_ok=True)
            elif orphan and (under_lock or _untouched(path, now)):
                path.unlink(missing_ok=True)

    def _write_meta(self) -> None:
        meta = self.dir / "meta.json"
        if meta.is_file():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        info = {
            "fingerprint": self.fingerprint,
            "encoder": self.cfg.model.encoder,
            "encoder_stages": self.cfg.model.encoder_stages,
            "weights": self.cfg.model.weights,
            "image_size": self.cfg.data.image_size,
            "dtype": str(CACHE_DTYPE),
            "layout": LAYOUT,
            "transform": repr(self.transform),
        }
        atomic_write(meta, lambda handle: handle.write(json.dumps(info, indent=2).encode()))

    def others(self) -> str | None:
        """A note on the other caches beside this one (other encoders, weights or settings, or an
        older version's fingerprint: since 2026-12-05 it holds the precision), which no run of this
        encoder reads and nothing removes, or None where there are none."""
        try:
            folders = [
                path
                for path in self.dir.parent.iterdir()
                if path != self.dir and (path / "meta.json").is_file()
            ]
            size = sum(
                shard.stat().st_size for path in folders for shard in path.glob("shards/*.npy")
            )
        except OSError:
            return None
        if not folders:
            return None
        return (
            f"note: {self.dir.parent} also holds {len(folders)} feature cache(s) of other "
            f"encoders or settings ({size / 1e9:.2f} GB; each folder's meta.json says which), "
            "which this run does not read; delete those no run needs"
        )

    def store(
        self, records: Sequence[ImageRecord], *, preload_bytes: int = PRELOAD_BYTES
    ) -> FeatureStore:
        """A `FeatureStore` over `records` (index i = records[i]); every one must be cached."""
        self.refresh()
        locations = np.empty((len(records), 2), dtype=np.int64)
        for position, record in enumerate(records):
            location = self._index.get(self.key(record))
            if location is None:
                raise UserError(
                    f"cached features of '{record.image_path}' are missing from {self.dir}; "
                    "train again to fill the cache"
                )
            locations[position] = location
        return FeatureStore(
            [str(self.shard_dir / f"{name}.npy") for name in self._shards],
            locations,
            self._grid_hw or (0, 0),
            self._row_shape or (0, 0),
            preload_bytes=preload_bytes,
        )

    def load(self, record: ImageRecord) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """(pooled (C,), grid (N, C), grid_hw) of one image, in the cache's float16."""
        features = self.store([record], preload_bytes=0).features([0])
        return features.pooled[0], features.grid[0], features.grid_hw

    def batches(
        self, records: Sequence[ImageRecord], batch_size: int
    ) -> Iterator[tuple[list[int], ImageFeatures]]:
        """`(record indices, float32 ImageFeatures on the CPU)` over `records`, in order."""
        store = self.store(records, preload_bytes=0)
        for start in range(0, len(records), batch_size):
            indices = list(range(start, min(start + batch_size, len(records))))
            features = store.features(indices)
            yield (
                indices,
                ImageFeatures(features.pooled.float(), features.grid.float(), features.grid_hw),
            )


class FeatureStore:
    """Batched reads of cached features: `read(indices)` -> float16 (B, 1 + N, C).

    `locations[i]` is the (shard number, row) of item i. Sets of at most `preload_bytes` are read
    into one tensor at construction; larger ones are read from the memory-mapped shards, which each
    process (DataLoader workers included) maps on first use.
    """

    def __init__(
        self,
        shard_paths: Sequence[str],
        locations: np.ndarray,
        grid_hw: tuple[int, int],
        row_shape: tuple[int, int],
        *,
        preload_bytes: int = PRELOAD_BYTES,
    ) -> None:
        self.shard_paths = list(shard_paths)
        self.locations = locations  # (items, 2) int64: shard number, row
        self.grid_hw = (int(grid_hw[0]), int(grid_hw[1]))
        self.row_shape = (int(row_shape[0]), int(row_shape[1]))  # (1 + N, C)
        self._maps: dict[int, np.ndarray] = {}
        self._memory: Tensor | None = None
        row_bytes = self.row_shape[0] * self.row_shape[1] * 2
        if len(locations) and row_bytes * len(locations) <= preload_bytes:
            memory = torch.empty((len(locations), *self.row_shape), dtype=CACHE_DTYPE)
            chunk = max(1, 64 * 1024**2 // row_bytes)
            for start in range(0, len(locations), chunk):
                stop = min(start + chunk, len(locations))
                memory[start:stop] = self.read(range(start, stop))
            self._memory = memory
            self._maps.clear()  # the shards are not needed any more

    @property
    def preloaded(self) -> bool:
        return self._memory is not None

    def __len__(self) -> int:
        return len(self.locations)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps are opened again in the receiving process
        return state

    def _shard(self, number: int) -> np.ndarray:
        shard = self._maps.get(number)
        if shard is None:
            path = self.shard_paths[number]
            try:
                shard = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                raise UserError(
                    f"feature cache shard {path} is gone; train again to fill the cache"
                ) from None
            except (OSError, ValueError):
                raise UserError(
                    f"feature cache shard {path} is damaged; delete it and its .json, then train "
                    "again (only its images are encoded again)"
                ) from None
            if shard.dtype != np.float16 or tuple(shard.shape[1:]) != self.row_shape:
                raise UserError(
                    f"feature cache shard {path} holds {shard.dtype} {shard.shape}, its index "
                    f"says float16 (*, {self.row_shape}); delete it and its .json and train again"
                )
            self._maps[number] = shard
        return shard

    def read(self, indices: Sequence[int] | range) -> Tensor:
        """Features of items `indices` as float16 (B, 1 + N, C): row 0 pooled, rows 1.. the grid."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = _batch_tensor((len(index), *self.row_shape))
        if self._memory is not None:
            return torch.index_select(self._memory, 0, torch.from_numpy(index), out=out)
        rows = out.numpy()
        locations = self.locations[index]
        for position in np.lexsort((locations[:, 1], locations[:, 0])):  # by shard, then row
            shard, row = locations[position]
            rows[position] = self._shard(int(shard))[row]  # one copy, from the page cache
        return out

    def features(self, indices: Sequence[int] | range) -> ImageFeatures:
        """float16 `ImageFeatures` (pooled (B, C), grid (B, N, C)) of items `indices`."""
        rows = self.read(indices)  # (B, 1 + N, C)
        return ImageFeatures(rows[:, 0], rows[:, 1:], self.grid_hw)


def _batch_tensor(shape: tuple[int, ...]) -> Tensor:
    """An uninitialised float16 tensor; in a DataLoader worker it lives in shared memory, so
    handing the batch to the training process copies nothing (as torch's default collate does)."""
    out = torch.empty(0, dtype=CACHE_DTYPE)
    if get_worker_info() is not None:
        numel = int(np.prod(shape))
        out = out.new(out._typed_storage()._new_shared(numel, device=out.device))
    return out.resize_(shape)


def features_to(features: ImageFeatures, device: torch.device) -> ImageFeatures:
    """Cached float16 features -> float32 on `device` (converted there: half the bytes to copy)."""
    return ImageFeatures(
        features.pooled.to(device, non_blocking=True).float(),
        features.grid.to(device, non_blocking=True).float(),
        (int(features.grid_hw[0]), int(features.grid_hw[1])),  # pin_memory makes it a list
    )


class _EncodedCaptions:
    """The encoded references of every image, flat: `ids` int32 and offsets (no Python lists)."""

    def __init__(
        self, records: Sequence[ImageRecord], vocab: Vocabulary, max_length: int | None
    ) -> None:
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must leave room for <start> and <end>, got {max_length}")
        ids = array("i")
        caption_starts = array("q", [0])
        image_starts = array("q", [0])
        for record in records:
            for caption in record.captions:
                ids.extend(encode_caption(vocab, caption, max_length))
                caption_starts.append(len(ids))
            image_starts.append(len(caption_starts) - 1)
        self.ids = np.frombuffer(ids, dtype=np.int32)  # every caption's ids, one after another
        self.caption_starts = np.frombuffer(caption_starts, dtype=np.int64)  # (captions + 1,)
        self.image_starts = np.frombuffer(image_starts, dtype=np.int64)  # (images + 1,)

    def count(self, image: int) -> int:
        return int(self.image_starts[image + 1] - self.image_starts[image])

    def caption(self, image: int, reference: int) -> Tensor:
        """ids (T,) long of reference `reference` of image `image`."""
        number = self.image_starts[image] + reference
        start, stop = self.caption_starts[number], self.caption_starts[number + 1]
        return torch.from_numpy(self.ids[start:stop].astype(np.int64))

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.caption_starts.nbytes + self.image_starts.nbytes


class FeatureGroups(Dataset):
    """One item per image with ``captions_per_image`` of its references, like
    `captioner.data.CaptionGroups`: `(image index, [ids (T_j,) long] * k)`.

    The references are picked by the same `pick_references`, so under the same per-item seeding
    (captioner.train's `SeededItems`) both data sets pick the same ones in the same order. The
    features are gathered per batch by `FeatureCollate` over `store` (index i = records[i]).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        vocab: Vocabulary,
        store: FeatureStore,
        captions_per_image: int,
        *,
        max_length: int | None = None,
    ) -> None:
        if captions_per_image < 1:
            raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
        if len(store) != len(records):
            raise ValueError(f"the store holds {len(store)} images, the records {len(records)}")
        self.store = store
        self.captions_per_image = captions_per_image
        self.captions = _EncodedCaptions(records, vocab, max_length)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> tuple[int, list[Tensor]]:
        picks = pick_references(self.captions.count(index), self.captions_per_image)
        return index, [self.captions.caption(index, reference) for reference in picks]


class FeaturePairs(Dataset):
    """One item per (image, reference caption) pair, in `captioner.data.CaptionPairs`' order:
    `(image index, [ids (T,) long])`. `pairs[i]` is the (record index, caption index) of item i."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        vocab: Vocabulary,
        store: FeatureStore,
        *,
        max_length: int | None = None,
    ) -> None:
        if len(store) != len(records):
            raise ValueError(f"the store holds {len(store)} images, the records {len(records)}")
        self.store = store
        self.captions = _EncodedCaptions(records, vocab, max_length)
        counts = np.diff(self.captions.image_starts)
        self._images = np.repeat(np.arange(len(records), dtype=np.int64), counts)  # (pairs,)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(record index, caption index) of every item, as `CaptionPairs.pairs`."""
        starts = self.captions.image_starts
        return [(int(i), p - int(starts[i])) for p, i in enumerate(self._images.tolist())]

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[int, list[Tensor]]:
        image = int(self._images[index])
        reference = index - int(self.captions.image_starts[image])
        return image, [self.captions.caption(image, reference)]


class FeatureCollate:
    """`FeatureGroups` / `FeaturePairs` items -> `(ImageFeatures float16 (B, ...), captions
    (B*k, T) padded with pad_id, lengths (B*k,))`; caption rows j*k .. j*k + k-1 are image j's.

    The features of the whole batch are read at once (`FeatureStore.read`), in the worker when
    the DataLoader has workers. Move them with `features_to`.
    """

    def __init__(self, store: FeatureStore, pad_id: int = 0) -> None:
        self.store = store
        self.pad_id = pad_id

    def __call__(
        self, batch: Sequence[tuple[int, list[Tensor]]]
    ) -> tuple[ImageFeatures, Tensor, Tensor]:
        features = self.store.features([index for index, _ in batch])
        captions = [caption for _, group in batch for caption in group]
        padded = torch.nn.utils.rnn.pad_sequence(
            captions, batch_first=True, padding_value=self.pad_id
        )  # (B*k, T)
        lengths = torch.tensor([len(caption) for caption in captions], dtype=torch.long)
        return features, padded, lengths
