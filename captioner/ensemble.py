"""Decode with several trained captioners at once: the next-word distribution is the mean of the
members' probabilities (self-critical.pytorch's ``eval_ensemble.py``, ``AttEnsemble``).

    captioner = load_ensemble(["runs/hard/best.pt", "runs/hard_top_down/best.pt"])
    [result] = caption_images(captioner, [load_image("photo.jpg")], beam_size=3)

Every member reads the image through its own encoder and keeps its own recurrent state; the
decoding algorithms of `captioner.decode` run unchanged over an `EnsembleDecoder`, which packs the
members' states, attention keys and image features into the tensors they reorder:

- state: each member's (S, L, R, H) flattened per row and concatenated, (1, 1, R, total), so
  that beam search's ``state.index_select(2, rows)`` moves every member's state with its beam;
- keys: each member's attention keys (B, N, A) flattened per image, (B, total) (None when no
  member attends), reordered by ``keys.index_select(0, images)``;
- features: an `ImageFeatures` whose pooled (B, sum C) and grid (B, 1, sum N*C) hold every
  member's per image, so ``features.index_select(images)`` works; `EnsembleDecoder.pack` builds
  it and remembers the members' grid shapes to unpack views at every step.

The members must share the vocabulary exactly and the eval preprocessing (image size and
normalisation): one image batch feeds every encoder. The ensemble runs in the first member's
trained precision and takes its decoding settings, as a single checkpoint would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from captioner.data.transforms import normalization_stats
from captioner.decoder import CaptionDecoder
from captioner.encoder import ImageFeatures
from captioner.inference import Captioner, captioner_from_payload
from captioner.model import CaptionModel
from recurrent.checkpoint import first_difference, load_checkpoint
from recurrent.errors import UserError
from recurrent.training import pick_device


class EnsembleDecoder(nn.Module):
    """The decoder interface of `captioner.decode` (``init_state``, ``attention_keys``, ``step``,
    ``vocab_size``, ``pad_id``) over several `CaptionDecoder`s that share a vocabulary.

    ``step`` returns log(mean over members of softmax(logits_m)) as the logits: a log-probability
    already, so the log-softmax the searches apply leaves it as it is. One member's logits are
    passed on unchanged (the same distribution, without a second rounding). The attention maps
    are the first attending member's (None when no member attends): there is no common grid to
    average maps over, members may see different grids.
    """

    def __init__(self, members: Sequence[CaptionDecoder]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one decoder")
        if len({(m.vocab_size, m.pad_id) for m in members}) > 1:
            raise ValueError("ensemble members must share the vocabulary")
        self.members = nn.ModuleList(members)
        self.vocab_size = members[0].vocab_size
        self.pad_id = members[0].pad_id
        # (N, C) of each member's grid, set by `pack`: the packed features' layout.
        self.grid_shapes: list[tuple[int, int]] | None = None

    # --- packing --------------------------------------------------------------------------------

    def pack(self, features: Sequence[ImageFeatures]) -> ImageFeatures:
        """Each member's `ImageFeatures` of the same B images -> one (float32) `ImageFeatures`:
        pooled (B, sum C), grid (B, 1, sum N*C), and the grid_hw of the first attending member
        (whose attention maps `step` returns), else of the first member."""
        if len(features) != len(self.members):
            raise ValueError(f"{len(features)} feature sets for {len(self.members)} members")
        self.grid_shapes = [(f.grid.size(1), f.grid.size(2)) for f in features]
        batch = features[0].grid.size(0)
        pooled = torch.cat([f.pooled.float() for f in features], dim=1)  # (B, sum C)
        grid = torch.cat([f.grid.float().reshape(batch, -1) for f in features], dim=1)
        attending = [f for f, m in zip(features, self.members, strict=True) if m.use_attention]
        grid_hw = (attending or features)[0].grid_hw
        return ImageFeatures(pooled, grid.unsqueeze(1), grid_hw)  # grid (B, 1, sum N*C)

    def unpack_features(self, features: ImageFeatures) -> list[ImageFeatures]:
        """The packed features (any rows of a `pack`ed batch) -> each member's, as views."""
        if self.grid_shapes is None:
            raise RuntimeError("EnsembleDecoder.pack the members' features before decoding")
        widths = [n * c for n, c in self.grid_shapes]
        if features.grid.size(-1) != sum(widths):
            raise ValueError("these features were not packed for this ensemble's grid shapes")
        grids = features.grid[:, 0].split(widths, dim=1)  # (B, N*C) each
        pooled = features.pooled.split([c for _, c in self.grid_shapes], dim=1)  # (B, C) each
        return [
            ImageFeatures(p, g.view(g.size(0), n, c), features.grid_hw)
            for p, g, (n, c) in zip(pooled, grids, self.grid_shapes, strict=True)
        ]

    def _state_shapes(self) -> list[tuple[int, int, int]]:
        """(S, L, H) of each member's state (S: 2 for LSTM's (h, c), 1 for GRU)."""
        return [(m.core.state_parts, m.state_layers, m.core.hidden_size) for m in self.members]

    def pack_state(self, states: Sequence[Tensor]) -> Tensor:
        """Members' states (S, L, R, H) -> (1, 1, R, sum S*L*H), one row per beam."""
        rows = states[0].size(2)
        flat = [state.permute(2, 0, 1, 3).reshape(rows, -1) for state in states]  # (R, S*L*H)
        return torch.cat(flat, dim=1)[None, None]  # (1, 1, R, total)

    def unpack_state(self, state: Tensor) -> list[Tensor]:
        """(1, 1, R, total) -> each member's state (S, L, R, H)."""
        shapes = self._state_shapes()
        parts = state[0, 0].split([s * layers * h for s, layers, h in shapes], dim=1)
        return [
            part.reshape(part.size(0), s, layers, h).permute(1, 2, 0, 3).contiguous()
            for part, (s, layers, h) in zip(parts, shapes, strict=True)
        ]

    # --- the decoder interface -------------------------------------------------------------------

    def init_state(self, features: ImageFeatures) -> Tensor:
        """Every member's initial state, packed: (1, 1, B, total)."""
        parts = self.unpack_features(features)
        states = [m.init_state(f) for m, f in zip(self.members, parts, strict=True)]
        return self.pack_state(states)

    def attention_keys(self, features: ImageFeatures) -> Tensor | None:
        """The attending members' keys (B, N, A) flattened per image and concatenated, (B, total);
        None when no member attends."""
        parts = self.unpack_features(features)
        keys = [
            m.attention_keys(f)
            for m, f in zip(self.members, parts, strict=True)
            if m.attention is not None
        ]
        if not keys:
            return None
        return torch.cat([k.reshape(k.size(0), -1) for k in keys], dim=1)  # (B, total)

    def _unpack_keys(self, keys: Tensor | None, parts: list[ImageFeatures]) -> list[Tensor | None]:
        """(B, total) -> each member's keys (B, N, A) (None for a member without attention, or
        for all when ``keys`` is None: each attending member then projects its grid itself)."""
        if keys is None:
            return [None] * len(self.members)
        unpacked: list[Tensor | None] = []
        offset = 0
        for member, part in zip(self.members, parts, strict=True):
            if member.attention is None:
                unpacked.append(None)
                continue
            positions = part.grid.size(1)
            size = member.attention.feature_proj.out_features
            width = positions * size
            unpacked.append(keys[:, offset : offset + width].view(-1, positions, size))
            offset += width
        return unpacked

    def step(
        self, tokens: Tensor, state: Tensor, features: ImageFeatures, keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """`CaptionDecoder.step` for every member: tokens (R,), packed state (1, 1, R, total) ->
        log of the mean of the members' next-word probabilities (R, V), the new packed state, and
        the first attending member's attention (R, N) or None. R may be g * B (g rows per image).
        """
        parts = self.unpack_features(features)
        member_keys = self._unpack_keys(keys, parts)
        logits, states, alpha = [], [], None
        for member, part, key, member_state in zip(
            self.members, parts, member_keys, self.unpack_state(state), strict=True
        ):
            member_logits, member_state, member_alpha = member.step(tokens, member_state, part, key)
            logits.append(member_logits)
            states.append(member_state)
            if alpha is None:
                alpha = member_alpha
        if len(logits) == 1:
            return logits[0], self.pack_state(states), alpha
        logp = torch.stack([torch.log_softmax(x.float(), dim=-1) for x in logits])  # (M, R, V)
        mean = torch.logsumexp(logp, dim=0) - math.log(len(logits))  # (R, V)
        return mean, self.pack_state(states), alpha


class EnsembleModel(nn.Module):
    """Several `CaptionModel`s decoded as one: ``encode(images)`` runs every member's encoder on
    the same batch and packs the features, ``decoder`` is their `EnsembleDecoder` (what
    `Captioner` needs of a model for `caption_images` and `evaluate_split`)."""

    def __init__(self, members: Sequence[CaptionModel]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.decoder = EnsembleDecoder([member.decoder for member in members])

    def encode(self, images: Tensor) -> ImageFeatures:
        """images (B, 3, H, W) -> the members' packed `ImageFeatures` (see `EnsembleDecoder.pack`)."""
        return self.decoder.pack([member.encode(images) for member in self.members])


def check_members(members: Sequence[Captioner], sources: Sequence[str]) -> None:
    """Refuse members that could not decode together: another vocabulary (the first differing
    entry is named) or other eval preprocessing (image size, normalisation)."""
    first, first_source = members[0], sources[0]
    first_tokens = first.vocab.to_list()
    first_stats = normalization_stats(first.cfg.model.weights, first.cfg.model.encoder)
    for member, source in zip(members[1:], sources[1:], strict=True):
        tokens = member.vocab.to_list()
        if (index := first_difference(first_tokens, tokens)) is not None:
            words = [repr(t[index]) if index < len(t) else "none" for t in (first_tokens, tokens)]
            raise UserError(
                f"{first_source} and {source} have different vocabularies (id {index}: "
                f"{words[0]} vs {words[1]}); ensemble only checkpoints trained on the same "
                "vocabulary"
            )
        size, first_size = member.cfg.data.image_size, first.cfg.data.image_size
        if size != first_size:
            raise UserError(
                f"{first_source} and {source} read images of different data.image_size "
                f"({first_size} vs {size}); ensemble only checkpoints with the same image size"
            )
        stats = normalization_stats(member.cfg.model.weights, member.cfg.model.encoder)
        if stats != first_stats:
            raise UserError(
                f"{first_source} and {source} normalise images differently (model.weights / "
                "model.encoder give other mean and std); ensemble only checkpoints with the "
                "same normalisation"
            )


def ensemble_from_payloads(
    payloads: Sequence[dict[str, Any]],
    sources: Sequence[str],
    device: str | torch.device = "cpu",
) -> Captioner:
    """A `Captioner` over the loaded checkpoint dicts ``payloads`` (named ``sources`` in errors):
    the first one's plain `Captioner` for one checkpoint, else an `EnsembleModel` with the first
    member's vocabulary, config (decoding settings, precision, data) and transform."""
    if not payloads:
        raise UserError("no checkpoint given; pass at least one --checkpoint")
    device = pick_device(device) if isinstance(device, str) else device
    members = [
        captioner_from_payload(payload, device, source=str(source))
        for payload, source in zip(payloads, sources, strict=True)
    ]
    if len(members) == 1:
        return members[0]
    check_members(members, [str(source) for source in sources])
    model = EnsembleModel([member.model for member in members]).eval()
    first = members[0]
    return Captioner(model, first.vocab, first.cfg, first.transform, device)


def load_ensemble(
    paths: Sequence[str],
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
) -> Captioner:
    """Load captioner checkpoints to decode as one ensemble (`load_captioner` for one path).

    A missing, corrupt or foreign file, or members that differ in vocabulary or preprocessing,
    is a one-line `UserError`, which calls the members ``names`` (default: their paths).
    """
    payloads = [load_checkpoint(path, task="captioner") for path in paths]
    return ensemble_from_payloads(payloads, names or [str(path) for path in paths], device)
