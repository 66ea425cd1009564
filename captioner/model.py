"""The whole captioner: `ImageEncoder` (CNN) -> `CaptionDecoder` (RNN)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captioner.config import CaptionerConfig
from captioner.decoder import CaptionDecoder
from captioner.encoder import ImageEncoder, ImageFeatures


class CaptionModel(nn.Module):
    """CNN encoder and recurrent decoder of ``cfg.model``, over a vocabulary of ``vocab_size``.

    ``forward(images, captions, lengths) -> (logits, loss)`` trains end to end; decoding goes
    through ``encode`` and the functions of `captioner.decode`, which take ``model.decoder``. With a
    frozen encoder, training may skip the encoder and feed cached `ImageFeatures` to
    ``model.decoder`` directly.
    """

    def __init__(self, cfg: CaptionerConfig, vocab_size: int, pad_id: int = 0) -> None:
        super().__init__()
        self.encoder = ImageEncoder(cfg.model)
        self.decoder = CaptionDecoder(cfg.model, vocab_size, self.encoder.out_channels, pad_id)

    def encode(self, images: Tensor) -> ImageFeatures:
        """images (B, 3, H, W) -> `ImageFeatures` (pooled (B, C), grid (B, N, C))."""
        return self.encoder(images)

    def forward(
        self,
        inputs: Tensor | ImageFeatures,
        captions: Tensor,
        lengths: Tensor,
        predicted_words: Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits (B*k, T-1, V) and loss; see `CaptionDecoder.forward`.

        ``inputs`` are images (B, 3, H, W), or their cached `ImageFeatures` (a frozen encoder's
        output, which then skips the encoder). ``captions`` may hold k references per image:
        rows j*k .. j*k + k-1 belong to image j (``train.captions_per_image``), and the image is
        encoded once for all k. ``predicted_words``: see `CaptionDecoder.forward`.
        """
        features = inputs if isinstance(inputs, ImageFeatures) else self.encoder(inputs)
        images = features.pooled.size(0)
        per_image = captions.size(0) // images
        if per_image > 1:
            owners = torch.arange(images, device=captions.device).repeat_interleave(per_image)
            features = features.index_select(owners)
        return self.decoder(
            features, captions, lengths, predicted_words, label_smoothing=label_smoothing
        )
