"""The whole captioner: `ImageEncoder` (CNN) -> `CaptionDecoder` (RNN)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from captioner.config import CaptionerConfig
from captioner.decoder import CaptionDecoder
from captioner.encoder import ImageEncoder, ImageFeatures


class CaptionModel(nn.Module):
    """CNN encoder and recurrent decoder of ``cfg.model``, over a vocabulary of ``vocab_size``.

    ``forward(images, captions, lengths) -> (logits, loss)`` trains end to end; decoding goes
    through ``encode`` and the functions of `captioner.decode`, which take ``model.decoder``. With a
    frozen encoder, training may skip the encoder: ``forward`` takes cached `ImageFeatures` in
    place of the images.
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
        captions: Tensor | None = None,
        lengths: Tensor | None = None,
        predicted_words: Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
        sampling_prob: float = 0.0,
        self_critical: Callable[[CaptionDecoder, ImageFeatures], Any] | None = None,
    ) -> Any:
        """Teacher-forced logits (B*k, T-1, V) and loss; see `CaptionDecoder.forward`.

        ``inputs`` are images (B, 3, H, W), or their cached `ImageFeatures` (a frozen encoder's
        output, which then skips the encoder). ``captions`` may hold k references per image:
        rows j*k .. j*k + k-1 belong to image j (``train.captions_per_image``), and the image is
        encoded once for all k (and the decoder's initial state and attention keys computed once).
        ``predicted_words``, ``label_smoothing`` and ``sampling_prob`` (scheduled sampling):
        see `CaptionDecoder.forward`.

        With ``self_critical`` (a `captioner.scst.SelfCritical` bound to the batch's images), the
        captions are not used: it returns ``self_critical(decoder, features)``, the self-critical
        loss and its figures. It runs here, inside ``forward``, so that under
        DistributedDataParallel the sampled captions' gradients are synchronised like the
        cross-entropy's.
        """
        features = inputs if isinstance(inputs, ImageFeatures) else self.encoder(inputs)
        if self_critical is not None:
            return self_critical(self.decoder, features)
        if captions is None or lengths is None:
            raise ValueError("cross-entropy training needs captions and lengths")
        return self.decoder(
            features,
            captions,
            lengths,
            predicted_words,
            label_smoothing=label_smoothing,
            sampling_prob=sampling_prob,
        )
