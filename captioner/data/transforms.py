"""Image preprocessing for the encoder, normalised the way its torchvision weights expect.

The mean and std come from the weights enum's own `transforms()` (never hard-coded), so a change
of backbone or weights keeps the preprocessing right. Looking them up reads only the enum's
metadata: nothing is downloaded.
"""

from __future__ import annotations

import os
import re

import torch
from torchvision.models import WeightsEnum, get_model_weights, get_weight
from torchvision.transforms import v2

from recurrent.errors import UserError

# A torchvision weights name ("ResNet50_Weights.IMAGENET1K_V2", "DEFAULT"); anything else is a path.
_WEIGHTS_NAME = re.compile(r"^(\w+_Weights\.)?[A-Z][A-Z0-9_]*$")


def _arch_weights(arch: str) -> type[WeightsEnum]:
    try:
        return get_model_weights(arch)
    except (KeyError, ValueError):
        raise UserError(
            f"unknown torchvision architecture '{arch}'; use e.g. resnet18, resnet50 or "
            "mobilenet_v3_small"
        ) from None


def resolve_weights(
    weights: str | os.PathLike[str] | WeightsEnum | None, arch: str = "resnet18"
) -> WeightsEnum | str | None:
    """What ``model.weights`` names: None, a torchvision weights enum member of `arch` (from
    "ResNet50_Weights.IMAGENET1K_V2", or "DEFAULT" / "IMAGENET1K_V1" for `arch`), or the path of a
    local weights file (a missing file is reported when it is loaded). The one place names are
    resolved: the encoder loads what it returns, the preprocessing reads its statistics."""
    if isinstance(weights, WeightsEnum) or weights is None or weights == "":
        return weights or None
    name = os.fspath(weights)
    if os.path.exists(name) or not _WEIGHTS_NAME.match(name):
        return name
    enum_class = _arch_weights(arch)
    try:
        member = get_weight(name) if "." in name else enum_class.verify(name)
    except (KeyError, ValueError, AttributeError):
        member = None
    if member is None or type(member) is not enum_class:
        raise UserError(
            f"model.weights '{name}' are not torchvision weights for {arch}; use e.g. "
            f"{enum_class.__name__}.DEFAULT, a path to a local state_dict file, or null"
        )
    return member


def preprocessing_weights(
    weights: str | os.PathLike[str] | WeightsEnum | None, arch: str
) -> WeightsEnum:
    """The weights enum whose preprocessing applies: the named weights, or for a local file or
    None `arch`'s DEFAULT weights, whose statistics a local fine-tune of the same backbone shares."""
    member = resolve_weights(weights, arch)
    return member if isinstance(member, WeightsEnum) else _arch_weights(arch).DEFAULT


def normalization_stats(
    weights: str | os.PathLike[str] | WeightsEnum | None = None, arch: str = "resnet18"
) -> tuple[list[float], list[float]]:
    """(mean, std) per RGB channel from the weights' own `transforms()` (see `preprocessing_weights`)."""
    preset = preprocessing_weights(weights, arch).transforms()
    return list(preset.mean), list(preset.std)


def build_transforms(
    image_size: int,
    train: bool,
    *,
    weights: str | os.PathLike[str] | WeightsEnum | None = None,
    hflip: bool = False,
    arch: str = "resnet18",
) -> v2.Compose:
    """PIL image or uint8 tensor (3, H, W) -> normalised float tensor (3, image_size, image_size).

    Train: a mild RandomResizedCrop (scale 0.85-1, near-square), so objects named in the caption are
    rarely cut off, and a horizontal flip only when `hflip` (off by default: flipping makes
    "left of" captions wrong). Eval: Resize(image_size) then CenterCrop(image_size).
    The geometry runs on the uint8 tensor (a PIL image is converted first): torchvision's
    antialiased tensor resize is about 3x faster than Pillow's here and gives Pillow's pixels to
    within one level in 255.
    """
    if image_size < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}")
    mean, std = normalization_stats(weights, arch)
    if train:
        geometry = [v2.RandomResizedCrop(image_size, scale=(0.85, 1.0), ratio=(0.95, 1.05))]
        if hflip:
            geometry.append(v2.RandomHorizontalFlip())
    else:
        geometry = [v2.Resize(image_size), v2.CenterCrop(image_size)]
    return v2.Compose(
        [
            v2.ToImage(),  # PIL -> uint8 tensor (3, H, W); a tensor stays as it is
            *geometry,
            v2.ToDtype(torch.float32, scale=True),  # -> float32 in [0, 1]
            v2.Normalize(mean=mean, std=std),
        ]
    )
