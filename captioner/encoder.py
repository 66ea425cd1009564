"""The image encoder: a torchvision ResNet cut after a chosen stage, returning a pooled vector and
the spatial grid of features the attention decoder looks at.

The backbone is built the torchvision way, ``get_model(name, weights=...)``, with ``model.weights``:

- ``None``: random initialisation (tests, or training from scratch);
- a torchvision weights name (``ResNet50_Weights.DEFAULT``, or ``DEFAULT`` / ``IMAGENET1K_V1`` for
  the configured architecture): torchvision loads them, downloading once into its cache;
- a local file holding a torchvision state_dict (keys ``conv1.weight``, ``layer1.0.bn1.bias``, ...;
  the classifier's ``fc.*`` keys may be present and are ignored), for machines without internet.

Only the stem and ``layer1 .. layer{encoder_stages}`` are kept: small images (the synthetic
scenes) keep a useful grid with fewer stages, and the unused stages cost nothing.
"""

from __future__ import annotations

import os
import pickle
import urllib.error
import urllib.request
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model, get_model_weights

from captioner.config import ModelConfig
from captioner.data.transforms import resolve_weights
from recurrent.checkpoint import refuse_compressed
from recurrent.errors import UserError, shown

ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
STAGES = ("layer1", "layer2", "layer3", "layer4")
STEM = ("conv1", "bn1", "relu", "maxpool")
FINETUNE_MODES = ("frozen", "last", "all")
# A torchvision weights name: "ResNet50_Weights.DEFAULT", or "DEFAULT" / "IMAGENET1K_V2" alone.


class ImageFeatures(NamedTuple):
    """What the encoder hands the decoder.

    pooled: (B, C) global average of the grid (show-and-tell's image vector).
    grid: (B, N, C) the feature map flattened row-major, N = grid_h * grid_w positions.
    grid_hw: (grid_h, grid_w), to fold attention weights back into a map.
    """

    pooled: Tensor
    grid: Tensor
    grid_hw: tuple[int, int]

    def index_select(self, index: Tensor) -> ImageFeatures:
        """Rows ``index`` (1-D long tensor) of the batch, e.g. each image repeated once per beam."""
        index = index.to(self.grid.device)
        return ImageFeatures(
            self.pooled.index_select(0, index), self.grid.index_select(0, index), self.grid_hw
        )

    def to(self, device: torch.device | str) -> ImageFeatures:
        return ImageFeatures(self.pooled.to(device), self.grid.to(device), self.grid_hw)


def _read_state_dict(path: str, arch: str) -> dict[str, Tensor]:
    """A plain state_dict for a torchvision ``arch`` from a local file; a missing or unreadable
    file is a UserError (a missing one names ``arch``'s own weights, which model.weights takes)."""
    if not os.path.isfile(path):
        raise UserError(
            f"encoder weights file '{path}' not found; pass an existing .pth state_dict, a "
            f"torchvision weights name such as {get_model_weights(arch).__name__}.DEFAULT, or "
            "null for random weights"
        )
    if path.endswith(".safetensors"):
        raise UserError(
            f"encoder weights '{path}' are safetensors; save them as a torch state_dict "
            "(torch.save(model.state_dict(), 'resnet.pth')) and pass that file"
        )
    advice = "save one with torch.save(model.state_dict(), path)"
    try:
        if zipfile.is_zipfile(path):  # torch's format since 1.6 (the older one is read as well)
            with zipfile.ZipFile(path) as archive:
                refuse_compressed(
                    archive, Path(path), f"pass the file torch.save wrote, or {advice}"
                )
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        AttributeError,
        TypeError,
        KeyError,  # a text file: its bytes read as pickle opcodes that fetch memo entries
        IndexError,
        UnicodeDecodeError,
    ):
        raise UserError(
            f"encoder weights file '{path}' is not a readable torch state_dict; {advice}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a common wrapper: {"state_dict": ..., "epoch": ...}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(
            f"encoder weights file '{path}' does not hold a state_dict (a dict of tensors); {advice}"
        )
    return state


def _load_local_weights(backbone: nn.Module, path: str, arch: str) -> None:
    state = _read_state_dict(path, arch)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is unused
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        key = wrong_shape[0]
        problems.append(
            f"{len(wrong_shape)} keys of another shape (e.g. {key}: {tuple(state[key].shape)} in "
            f"the file, {tuple(expected[key].shape)} in {arch})"
        )
    if problems:
        raise UserError(
            f"encoder weights file '{path}' does not match a torchvision {arch}: "
            f"{'; '.join(problems)}; pass a state_dict of model.encoder={arch}"
        )
    backbone.load_state_dict(state, strict=False)  # only fc.* may be left out


def build_backbone(arch: str, weights: str | None) -> nn.Module:
    """The full torchvision classifier ``arch`` with ``weights`` (see the module docstring)."""
    resolved = resolve_weights(weights, arch)
    if isinstance(resolved, WeightsEnum):
        try:
            _check_reachable(resolved.url)  # before torch.hub prints "Downloading: ..."
            return get_model(arch, weights=resolved)
        except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
            raise UserError(
                f"could not download the encoder weights {resolved} ({type(err).__name__}: "
                f"{err}); without internet, fetch {resolved.url} elsewhere and pass the file's "
                f"path as model.weights (or put it in {torch.hub.get_dir()}/checkpoints)"
            ) from None
    backbone = get_model(arch, weights=None)
    if resolved is not None:
        _load_local_weights(backbone, resolved, arch)
    return backbone


def _check_reachable(url: str) -> None:
    """Raise the `urllib.error.URLError` of a network that cannot reach ``url``, unless torch.hub
    has the file already. torch.hub writes "Downloading: URL to PATH" before it tries, so without
    this an offline machine printed that line above the one-line error."""
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if os.path.isfile(cached):
        return
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15).close()
    except urllib.error.HTTPError:  # the server answered: the download itself will tell
        pass


class ImageEncoder(nn.Module):
    """ResNet stem + ``layer1 .. layer{encoder_stages}``: images (B, 3, H, W) -> `ImageFeatures`.

    ``out_channels`` is C of the last kept stage (resnet18/34: 64, 128, 256, 512; resnet50 and up:
    256, 512, 1024, 2048). The grid has (H / 2**(stages+1)) x (W / 2**(stages+1)) positions (rounded
    up), e.g. 7 x 7 for 224 pixels through all four stages.

    Fine-tuning (``model.finetune``), applied at construction with `set_finetune`:

    - ``frozen``: no parameter trains; the encoder always stays in eval mode, so BatchNorm keeps its
      running statistics even when the caption model is put in train mode;
    - ``last``: the last ``finetune_stages`` of the kept stages train (asking for more stages than
      are kept makes the stem train too); the frozen part stays in eval mode;
    - ``all``: everything trains.
    """

    def __init__(self, model_cfg: ModelConfig) -> None:
        super().__init__()
        if not 1 <= model_cfg.encoder_stages <= len(STAGES):
            raise UserError(
                f"model.encoder_stages must be 1 to 4 (stop after layer1..layer4), got "
                f"{model_cfg.encoder_stages}"
            )
        arch = model_cfg.encoder
        if arch not in ENCODERS:
            raise UserError(f"unknown model.encoder '{arch}'; use one of {', '.join(ENCODERS)}")
        backbone = build_backbone(arch, model_cfg.weights)
        kept = STEM + STAGES[: model_cfg.encoder_stages]
        self.body = nn.Sequential(OrderedDict((name, getattr(backbone, name)) for name in kept))
        last_block = self.body[-1][-1]
        self.out_channels = (
            last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
        ).num_features
        self.arch = arch
        self.num_stages = model_cfg.encoder_stages
        self._frozen_units: list[str] = []  # stem / stage names whose parameters do not train
        self._train_requested = True  # the mode last asked for with train(), kept when frozen
        self.set_finetune(model_cfg.finetune, model_cfg.finetune_stages)
        # Channels-last (NHWC) convolutions: cuDNN's fast path on GPUs, and oneDNN's on CPUs too
        # (the scenes ResNet-18 trunk on this project's CPU: 1.16-1.56x, training and inference,
        # fp32 and bf16; bench/precision.py). Loading a state_dict, moving to a device or
        # changing dtype keep the layout.
        self.to(memory_format=torch.channels_last)

    def units(self) -> list[tuple[str, nn.Module]]:
        """The parts fine-tuning switches, in order: ("stem", ...), ("layer1", ...), ..."""
        stem = nn.ModuleList([getattr(self.body, name) for name in STEM])
        return [
            ("stem", stem),
            *((name, getattr(self.body, name)) for name in STAGES[: self.num_stages]),
        ]

    def set_finetune(self, mode: str, stages: int = 1) -> None:
        """Choose which parameters train: ``frozen``, the ``last`` ``stages`` stages, or ``all``."""
        if mode not in FINETUNE_MODES:
            raise UserError(
                f"model.finetune must be one of {', '.join(FINETUNE_MODES)}, got {shown(mode)}"
            )
        units = self.units()
        if mode == "frozen":
            trainable = 0
        elif mode == "all":
            trainable = len(units)
        else:
            if stages < 1:
                raise UserError(
                    f"model.finetune_stages must be at least 1 with finetune=last, got {stages}; "
                    "use finetune=frozen to train no stage"
                )
            trainable = min(stages, len(units))
        self.finetune = mode
        self._frozen_units = [name for name, _ in units[: len(units) - trainable]]
        for index, (_, unit) in enumerate(units):
            unit.requires_grad_(index >= len(units) - trainable)
        self.train(self._train_requested)  # put the frozen part in eval mode

    def train(self, mode: bool = True) -> ImageEncoder:
        """`nn.Module.train`, but frozen parts stay in eval mode (BatchNorm statistics fixed)."""
        self._train_requested = mode
        super().train(mode and self.finetune != "frozen")
        for name, unit in self.units():
            if name in self._frozen_units:
                unit.eval()
        return self

    def forward(self, images: Tensor) -> ImageFeatures:
        x = images.contiguous(memory_format=torch.channels_last)  # (B, 3, H, W)
        # The frozen units are a prefix of the body: the stem's modules, then whole stages.
        frozen = len(STEM) + len(self._frozen_units) - 1 if self._frozen_units else 0
        if frozen:
            with torch.no_grad():  # keep no activations for parts that do not train
                x = self.body[:frozen](x)
        x = self.body[frozen:](x)  # (B, C, h, w)
        height, width = x.shape[-2:]
        grid = x.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major positions
        pooled = grid.mean(dim=1)  # (B, C) global average pool
        return ImageFeatures(pooled, grid, (int(height), int(width)))
