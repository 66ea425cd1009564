"""On-disk cache of a frozen encoder's features, so training runs the CNN once per image, ever.

With ``model.finetune: frozen`` the encoder is a fixed function of the image, so its output never
changes between epochs or runs. `FeatureCache` computes the features of each image once, with
the deterministic *eval* transform (no random crops: augmentation would defeat the cache), and
keeps them on disk in float16:

    <cache_dir>/<fingerprint>/<aa>/<image key>.pt   {"pooled": (C,), "grid": (N, C), "grid_hw": [h, w]}
    <cache_dir>/<fingerprint>/meta.json             what the fingerprint stands for (for people)

- ``fingerprint`` hashes everything the features depend on: the encoder architecture and stages,
  the weights setting, the preprocessing (image size, crop, normalisation: the transform's repr)
  and the encoder's actual parameter and buffer values. A different encoder never reads another's
  features, and a changed weights file is noticed even under the same name.
- ``image key`` hashes the image's absolute path, size and modification time, so an edited image is
  encoded again.
- one file per image, written to a temporary name and renamed: an interrupted run leaves only
  complete files, the next run encodes just what is missing, and data sets of any size work
  (COCO's ~123k images at 8x8x2048 are ~32 GB, too much for one file in memory).

`FeaturePairs` is the training data set over the cache: one item per (image, caption) pair, like
`captioner.data.CaptionPairs` but holding features instead of pixels. When all features of a set
fit in `PRELOAD_BYTES` they are read into memory once; otherwise each item reads its file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner.config import CaptionerConfig
from captioner.data import ImageOnly, ImageRecord, Vocabulary
from captioner.encoder import ImageEncoder, ImageFeatures
from recurrent.errors import UserError
from recurrent.precision import Precision

CACHE_DTYPE = torch.float16  # halves the disk and memory; the decoder computes in float32
PRELOAD_BYTES = 2 * 1024**3  # feature sets up to this size are held in memory


def encoder_fingerprint(encoder: ImageEncoder, cfg: CaptionerConfig, transform: object) -> str:
    """sha256 over the encoder's settings, its preprocessing and its parameter values."""
    digest = hashlib.sha256()
    settings = {
        "encoder": cfg.model.encoder,
        "encoder_stages": cfg.model.encoder_stages,
        "weights": cfg.model.weights,
        "image_size": cfg.data.image_size,
        "transform": repr(transform),
        "dtype": str(CACHE_DTYPE),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _image_key(image_path: str) -> str:
    """Hash of the image's path, size and modification time (a changed file gets a new key)."""
    try:
        info = os.stat(image_path)
    except OSError:
        raise UserError(
            f"image '{image_path}' not found; check the data set's image root"
        ) from None
    text = f"{os.path.abspath(image_path)}\0{info.st_size}\0{info.st_mtime_ns}"
    return hashlib.sha1(text.encode()).hexdigest()


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class FeatureCache:
    """The cached features of one encoder (one fingerprint) under `root`.

    `ensure(records)` encodes the images that are not cached yet; `load(record)` reads one image's
    features; `batches(records, batch_size)` yields `(record indices, ImageFeatures)` for decoding.
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
        self._keys: dict[str, str] = {}  # image path -> key, so each file is stat-ed once

    def path(self, record: ImageRecord) -> Path:
        key = self._keys.get(record.image_path)
        if key is None:
            key = self._keys[record.image_path] = _image_key(record.image_path)
        return self.dir / key[:2] / f"{key}.pt"

    def missing(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """The records (one per image path) whose features are not on disk yet."""
        unique = {record.image_path: record for record in records}
        return [record for record in unique.values() if not self.path(record).is_file()]

    @torch.no_grad()
    def ensure(
        self,
        records: Sequence[ImageRecord],
        *,
        device: torch.device,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ) -> int:
        """Encode and store every image of `records` that is not cached; return how many."""
        todo = self.missing(records)
        if not todo:
            return 0
        self._write_meta()
        loader = DataLoader(
            ImageOnly(todo, self.transform),
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            bar = tqdm(loader, desc="caching features", unit="batch", disable=not progress or None)
            for images, indices in bar:
                with Precision.for_inference(self.cfg.train.precision, device).autocast():
                    features = self.encoder(images.to(device, non_blocking=True))
                pooled = features.pooled.to("cpu", CACHE_DTYPE)  # (B, C)
                grid = features.grid.to("cpu", CACHE_DTYPE)  # (B, N, C)
                for row, index in enumerate(indices.tolist()):
                    payload = {
                        "pooled": pooled[row].clone(),
                        "grid": grid[row].clone(),
                        "grid_hw": list(features.grid_hw),
                    }
                    _save_atomic(payload, self.path(todo[index]))
        finally:
            self.encoder.train(was_training)
        return len(todo)

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
            "transform": repr(self.transform),
        }
        tmp = meta.with_name(f".meta.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
        os.replace(tmp, meta)

    def load(self, record: ImageRecord) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """(pooled (C,), grid (N, C), grid_hw) of one image, in the cache's float16."""
        path = self.path(record)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(
                f"cached features of '{record.image_path}' are missing from {self.dir}; "
                "train again to rebuild the cache"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError):
            raise UserError(
                f"cached features file {path} is damaged; delete it and train again"
            ) from None
        height, width = payload["grid_hw"]
        return payload["pooled"], payload["grid"], (int(height), int(width))

    def batches(
        self, records: Sequence[ImageRecord], batch_size: int
    ) -> Iterator[tuple[list[int], ImageFeatures]]:
        """`(record indices, float32 ImageFeatures on the CPU)` over `records`, in order."""
        for start in range(0, len(records), batch_size):
            indices = list(range(start, min(start + batch_size, len(records))))
            items = [self.load(records[index]) for index in indices]
            yield indices, stack_features(items)


def stack_features(items: Sequence[tuple[Tensor, Tensor, tuple[int, int]]]) -> ImageFeatures:
    """Per-image (pooled, grid, grid_hw) -> one float32 `ImageFeatures` batch."""
    pooled = torch.stack([item[0] for item in items]).float()  # (B, C)
    grid = torch.stack([item[1] for item in items]).float()  # (B, N, C)
    return ImageFeatures(pooled, grid, items[0][2])


class FeaturePairs(Dataset):
    """One item per (image, reference caption) pair: `((pooled, grid, grid_hw), ids (T,))`.

    The captions are encoded exactly as `captioner.data.CaptionPairs` does (<start> ... <end>, cut
    to `max_length` ids keeping the <end>), so the cached and the uncached runs see the same
    targets. Features come from memory when the whole set is at most `PRELOAD_BYTES`.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        vocab: Vocabulary,
        cache: FeatureCache,
        *,
        max_length: int | None = None,
    ) -> None:
        self.records = list(records)
        self.cache = cache
        self.pairs: list[tuple[int, int]] = []
        self.captions: list[list[int]] = []
        for record_index, record in enumerate(self.records):
            for caption_index, caption in enumerate(record.captions):
                ids = vocab.encode(caption)
                if max_length is not None and len(ids) > max_length:
                    ids = [*ids[: max_length - 1], vocab.end_id]
                self.pairs.append((record_index, caption_index))
                self.captions.append(ids)
        self._memory: list[tuple[Tensor, Tensor, tuple[int, int]]] | None = None
        if self.records:
            pooled, grid, _ = cache.load(self.records[0])
            per_image = (pooled.numel() + grid.numel()) * pooled.element_size()
            if per_image * len(self.records) <= PRELOAD_BYTES:
                self._memory = [cache.load(record) for record in self.records]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[tuple[Tensor, Tensor, tuple[int, int]], Tensor]:
        record_index, _ = self.pairs[index]
        if self._memory is not None:
            features = self._memory[record_index]
        else:
            features = self.cache.load(self.records[record_index])
        return features, torch.tensor(self.captions[index], dtype=torch.long)  # (T,)


def collate_feature_pairs(
    batch: Sequence[tuple[tuple[Tensor, Tensor, tuple[int, int]], Tensor]], pad_id: int = 0
) -> tuple[ImageFeatures, Tensor, Tensor]:
    """`FeaturePairs` items -> `(ImageFeatures, captions (B, T) padded with pad_id, lengths (B,))`."""
    features = stack_features([item[0] for item in batch])
    captions = torch.nn.utils.rnn.pad_sequence(
        [caption for _, caption in batch], batch_first=True, padding_value=pad_id
    )  # (B, T)
    lengths = torch.tensor([len(caption) for _, caption in batch], dtype=torch.long)  # (B,)
    return features, captions, lengths
