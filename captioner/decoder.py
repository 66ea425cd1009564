"""The caption decoder: word embedding -> the shared `RecurrentCore` -> dropout -> word logits.

Three variants, chosen by ``model.attention`` and ``model.top_down``:

- show-and-tell (Vinyals et al. 2015, "Show and Tell"): the image's pooled feature sets the initial
  state of every layer through a learned projection and tanh; the core reads only the words.
- soft attention (Xu et al. 2015, "Show, Attend and Tell", section 4.2): at every step additive
  attention over the grid positions, scored from the previous top-layer hidden state, gives a
  context vector, scaled by a gate beta = sigmoid(f_beta(h)) and concatenated with the word
  embedding as the core's input. The initial state comes from the mean grid feature, and the loss
  adds the doubly stochastic regulariser alpha_c * sum_i (1 - sum_t alpha_ti)^2 (their eq. 14),
  per predicted word like the cross-entropy.
- top-down attention (``model.top_down``; Anderson et al. 2018, "Bottom-Up and Top-Down Attention
  for Image Captioning and Visual Question Answering", section 3.2; self-critical.pytorch's
  ``TopDownCore``): two recurrent cores per step. The attention core (one layer) reads the
  language core's previous output, the mean grid feature and the word embedding; its output scores
  the grid; the language core (``model.num_layers`` layers) reads the attended feature and the
  attention core's output, and its top layer's output gives the word logits. One state holds both
  cores' layers, the attention core's first, (S, 1 + L, B, H), so that decoding handles it as one
  core's; no gate, and the same initial-state projection and regulariser as soft attention.

One step serves teacher-forced training and decoding alike. For show-and-tell the teacher-forced
`forward` runs the whole sequence through the core in one call (one fused kernel), which computes
exactly what stepping would; the attention variant loops the step over time, with the words
embedded and the logits computed for the whole sequence at once (one call each instead of one a
step: about 4-6% of the decoder's training step on the CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.config import ModelConfig
from captioner.encoder import ImageFeatures
from recurrent.core import RecurrentCore
from recurrent.sampling import draw


class AdditiveAttention(nn.Module):
    """Bahdanau-style attention: score_i = w^T tanh(W_f f_i + W_h h), alpha = softmax_i(score).

    The projection W_f f of the grid does not depend on the step, so callers compute it once per
    sequence with `project` and pass it to every `forward`.
    """

    def __init__(self, feature_channels: int, hidden_size: int, attention_size: int) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(feature_channels, attention_size)
        self.hidden_proj = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, 1)

    def project(self, grid: Tensor) -> Tensor:
        """grid (B, N, C) -> keys (B, N, A)."""
        return self.feature_proj(grid)

    def forward(self, grid: Tensor, keys: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """grid (B, N, C), keys (B, N, A), hidden (R, H) -> context (R, C), alpha (R, N).

        R is B (one query per image) or a multiple g * B: then rows g*i .. g*i + g-1 all attend
        to image i (beam search's beams of one image), without repeating its grid g times.
        """
        batch, rows = grid.size(0), hidden.size(0)
        query = self.hidden_proj(hidden)  # (R, A)
        if rows == batch:
            alpha = torch.softmax(self._scores(keys, query.unsqueeze(1)), dim=-1)  # (B, N)
            context = torch.bmm(alpha.unsqueeze(1), grid).squeeze(1)  # (B, C)
            return context, alpha
        per_image = rows // batch
        query = query.view(batch, per_image, 1, -1)  # (B, g, 1, A)
        alpha = torch.softmax(self._scores(keys.unsqueeze(1), query), dim=-1)  # (B, g, N)
        context = torch.bmm(alpha, grid)  # (B, g, C)
        return context.view(rows, -1), alpha.view(rows, -1)

    def _scores(self, keys: Tensor, query: Tensor) -> Tensor:
        """w^T tanh(keys + query) + b, keys and query broadcast over (..., A) -> (...).

        Decoding on the CPU (no gradients) computes it in float32, under autocast too, and in
        place: tanh as 2 sigmoid(2x) - 1, the same function to float32 rounding (absolute error
        about 1e-7), and the product with w as an element-wise product summed per row. torch's CPU
        tanh runs about 4x slower than its sigmoid, in float32 and bf16 alike, and this energy
        (rows x positions x attention units) is the largest element-wise tensor of a decoding
        step: its tanh took a third of a batched beam search (bench/beam_search.py). A row's
        sum does not depend on the other rows, where a matrix product's rounding does (with the
        bf16 LSTM steps, batched beam search then gives one image at a time's numbers exactly
        where positions x attention units is a multiple of 32: torch's sigmoid computes a
        tensor's elements past a multiple of 32 floats on a scalar path that rounds differently),
        and float32 keeps the small differences between positions that bf16 would round away.
        Training and other devices keep torch.tanh and the linear layer in autocast's precision.
        """
        if torch.is_grad_enabled() or keys.device.type != "cpu":
            return self.score(torch.tanh(keys + query)).squeeze(-1)
        energy = (keys.float() + query.float()).mul_(2).sigmoid_().mul_(2).sub_(1)
        return energy.mul_(self.score.weight[0]).sum(dim=-1).add_(self.score.bias)


class CaptionDecoder(nn.Module):
    """Words given image features: ``step`` for one token, ``forward`` teacher-forced with a loss.

    Captions are id tensors (B, T) beginning with <start> and ending with <end>, right-padded with
    ``pad_id``; ``lengths`` (B,) counts each caption's ids including <start> and <end>.
    """

    def __init__(
        self, model_cfg: ModelConfig, vocab_size: int, feature_channels: int, pad_id: int = 0
    ) -> None:
        super().__init__()
        cfg = model_cfg
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.use_attention = cfg.attention
        self.alpha_c = cfg.alpha_c
        self.embedding = nn.Embedding(vocab_size, cfg.embed_size, padding_idx=pad_id)
        if cfg.top_down and not cfg.attention:
            raise ValueError("model.top_down needs model.attention")
        self.attention = (
            AdditiveAttention(feature_channels, cfg.hidden_size, cfg.attention_size)
            if cfg.attention
            else None
        )
        self.f_beta: nn.Linear | None = None  # soft attention's gate
        self.attention_core: RecurrentCore | None = None  # top-down attention's first core
        if cfg.top_down:
            self.attention_core = RecurrentCore(
                cfg.cell, cfg.hidden_size + feature_channels + cfg.embed_size, cfg.hidden_size,
                num_layers=1, backend=cfg.backend,
            )  # fmt: skip
            input_size = feature_channels + cfg.hidden_size  # the language core's
        elif cfg.attention:
            self.f_beta = nn.Linear(cfg.hidden_size, 1)  # the gating scalar of Xu et al. sec. 4.2.1
            input_size = cfg.embed_size + feature_channels
        else:
            input_size = cfg.embed_size
        self.core = RecurrentCore(
            cfg.cell, input_size, cfg.hidden_size, cfg.num_layers, cfg.dropout, cfg.backend
        )
        # Image feature -> initial state of every layer (h and, for LSTM, c) of every core.
        self.state_layers = cfg.num_layers + (1 if cfg.top_down else 0)
        state_numel = self.core.state_parts * self.state_layers * cfg.hidden_size
        self.init_proj = nn.Linear(feature_channels, state_numel)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.tied_embeddings:
            # Output weights = embedding matrix (Press & Wolf 2017); a projection bridges the sizes.
            self.out_proj = (
                nn.Linear(cfg.hidden_size, cfg.embed_size, bias=False)
                if cfg.hidden_size != cfg.embed_size
                else nn.Identity()
            )
            self.output = nn.Linear(cfg.embed_size, vocab_size)
            self.output.weight = self.embedding.weight
        else:
            self.out_proj = nn.Identity()
            self.output = nn.Linear(cfg.hidden_size, vocab_size)

    # --- pieces ---------------------------------------------------------------------------------

    def init_state(self, features: ImageFeatures) -> Tensor:
        """Initial core state (S, L, B, H) from the image: tanh(W f + b).

        f is the pooled vector for show-and-tell and the mean grid feature for attention (the two
        are equal for a globally average-pooled encoder; each variant reads the one it attends to).
        """
        image = features.grid.mean(dim=1) if self.use_attention else features.pooled  # (B, C)
        core = self.core
        state = torch.tanh(self.init_proj(image))  # (B, S*L*H)
        layers = self.state_layers  # every core's layers
        state = state.view(-1, core.state_parts, layers, core.hidden_size)  # (B, S, L, H)
        return state.permute(1, 2, 0, 3).contiguous()  # (S, L, B, H)

    def attention_keys(self, features: ImageFeatures) -> Tensor | None:
        """The step-independent attention projection of the grid (B, N, A), or None without
        attention. Pass it to `step` as ``keys`` to avoid recomputing it at every step."""
        return self.attention.project(features.grid) if self.attention is not None else None

    def logits(self, hidden: Tensor) -> Tensor:
        """Top-layer outputs (..., H) -> vocabulary logits (..., V)."""
        return self.output(self.out_proj(self.dropout(hidden)))

    # --- one step -------------------------------------------------------------------------------

    def step(
        self, tokens: Tensor, state: Tensor, features: ImageFeatures, keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Read ``tokens`` (B,) with ``state`` (S, L, B, H) (L: `state_layers`): -> logits (B, V) of
        the next token, the new state, and the attention weights (B, N) used at this step (None
        without attention).

        ``features`` (and ``keys``) may instead hold one row per image for g consecutive token
        rows each (tokens (g * B_img,)): beam search's beams read their image without copies.
        """
        if keys is None and self.attention is not None:
            keys = self.attention.project(features.grid)  # (B, N, A)
        output, state, alpha = self._advance(self.embedding(tokens), state, features, keys)
        return self.logits(output), state, alpha

    def _advance(
        self, x: Tensor, state: Tensor, features: ImageFeatures, keys: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """`step` from the embedded tokens x (B, E): -> top-layer output (B, H), state, alpha."""
        alpha = None
        if self.attention_core is not None:
            return self._advance_top_down(x, state, features, keys)
        if self.attention is not None:
            hidden = RecurrentCore.top_hidden(state)  # (B, H), the previous step's output
            context, alpha = self.attention(features.grid, keys, hidden)  # (B, C), (B, N)
            gate = torch.sigmoid(self.f_beta(hidden))  # (B, 1)
            x = torch.cat([x, gate * context], dim=-1)  # (B, E + C)
        output, state = self.core.step(x, state)  # (B, H)
        return output, state, alpha

    def _advance_top_down(
        self, x: Tensor, state: Tensor, features: ImageFeatures, keys: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Anderson et al.'s step (section 3.2): the attention core, the attention it queries, then
        the language core. ``state`` (S, 1 + L, B, H): layer 0 is the attention core's, layers 1..
        the language core's."""
        rows, grid = x.size(0), features.grid
        mean = grid.mean(dim=1)  # (B_img, C)
        if rows != mean.size(0):  # g token rows per image: beams, or k references
            per_image = rows // mean.size(0)
            mean = mean.unsqueeze(1).expand(-1, per_image, -1).reshape(rows, -1)  # (B, C)
        language_prev = RecurrentCore.top_hidden(state)  # (B, H)
        attention_in = torch.cat([language_prev, mean, x], dim=-1)  # (B, H + C + E)
        query, attention_state = self.attention_core.step(attention_in, state[:, :1])  # (B, H)
        context, alpha = self.attention(grid, keys, query)  # (B, C), (B, N)
        language_in = torch.cat([context, query], dim=-1)  # (B, C + H)
        output, language_state = self.core.step(language_in, state[:, 1:])
        return output, torch.cat([attention_state, language_state], dim=1), alpha

    # --- teacher forcing ------------------------------------------------------------------------

    def forward(
        self,
        features: ImageFeatures,
        captions: Tensor,
        lengths: Tensor,
        predicted_words: Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
        sampling_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced: read captions[:, :-1], predict captions[:, 1:].

        Returns logits (B, T-1, V) and the cross-entropy summed over real (non-padding) targets,
        plus ``alpha_c`` times the doubly stochastic attention regulariser for the attention
        variant, divided by the number of predicted words: this batch's, or ``predicted_words``
        when given (under torchrun, the whole global batch's divided by the number of processes,
        so that averaging the processes' gradients gives exactly the global batch's mean).
        Positions at or past a caption's length never affect the loss, whatever tokens they hold.
        ``features`` may hold one row per image for k consecutive caption rows each (B = k *
        images; ``train.captions_per_image``): the initial state and the attention keys are then
        computed once per image and every step attends to the image's grid without copying it k
        times, as `step` does for beam search.
        ``label_smoothing`` (``train.label_smoothing``; Szegedy et al. 2016) mixes the one-hot
        target with a uniform distribution over the vocabulary, as `F.cross_entropy` does;
        padding positions stay out of the loss.
        ``sampling_prob`` > 0 is scheduled sampling (Bengio et al. 2015, as self-critical.pytorch's
        ``ss_prob``): at every step after the first, each caption reads, with that probability, a
        word drawn from the model's own distribution of the step before (no gradient flows through
        the draw) instead of the reference word, from ``generator`` (None: the global one). The
        targets stay the reference's.
        """
        inputs = captions[:, :-1]  # (B, T-1)
        steps = inputs.size(1)
        input_lengths = (lengths.to(captions.device) - 1).clamp(min=1)  # (B,) real input steps
        valid = torch.arange(steps, device=captions.device)[None, :] < input_lengths[:, None]
        targets = captions[:, 1:].masked_fill(~valid, self.pad_id)  # (B, T-1)
        images = features.grid.size(0)
        if captions.size(0) % images:
            raise ValueError(f"{captions.size(0)} captions do not divide among {images} images")
        state = self.init_state(features).repeat_interleave(captions.size(0) // images, dim=2)
        if sampling_prob > 0:
            logits, alphas = self._scheduled_sampling(
                features, inputs, state, sampling_prob, generator
            )
        elif self.attention is None:
            outputs, _ = self.core(self.embedding(inputs), state, input_lengths)  # (B, T-1, H)
            logits, alphas = self.logits(outputs), None  # (B, T-1, V)
        else:
            embedded = self.embedding(inputs)  # (B, T-1, E)
            keys = self.attention_keys(features)
            step_outputs, step_alphas = [], []
            for t in range(steps):
                output, state, alpha = self._advance(embedded[:, t], state, features, keys)
                step_outputs.append(output)
                step_alphas.append(alpha)
            logits = self.logits(torch.stack(step_outputs, dim=1))  # (B, T-1, V)
            alphas = torch.stack(step_alphas, dim=1)  # (B, T-1, N)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            targets.reshape(-1),
            ignore_index=self.pad_id,
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        if alphas is not None and self.alpha_c > 0:
            loss = loss + self.alpha_c * self.attention_regularizer(alphas, valid)
        words = valid.sum().clamp(min=1) if predicted_words is None else predicted_words
        return logits, loss / words

    def _scheduled_sampling(
        self,
        features: ImageFeatures,
        inputs: Tensor,
        state: Tensor,
        sampling_prob: float,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor | None]:
        """`forward`'s steps with scheduled sampling: -> logits (B, T-1, V), alphas (B, T-1, N) or
        None. One step at a time, since a step's input may be the word drawn from the step
        before."""
        keys = self.attention_keys(features)
        rows = inputs.size(0)
        step_logits, step_alphas = [], []
        tokens = inputs[:, 0]
        for t in range(inputs.size(1)):
            if t > 0:
                chance = torch.rand(rows, device=inputs.device, generator=generator)  # (B,)
                own = chance < sampling_prob
                probs = step_logits[-1].detach().float().softmax(dim=-1)  # (B, V)
                sampled = draw(probs, generator)  # (B,)
                tokens = torch.where(own, sampled, inputs[:, t])
            output, state, alpha = self._advance(self.embedding(tokens), state, features, keys)
            step_logits.append(self.logits(output))
            step_alphas.append(alpha)
        alphas = torch.stack(step_alphas, dim=1) if self.attention is not None else None
        return torch.stack(step_logits, dim=1), alphas

    @staticmethod
    def attention_regularizer(alphas: Tensor, valid: Tensor) -> Tensor:
        """Doubly stochastic regulariser (Xu et al. eq. 14): encourage every grid position to get
        about as much attention in total over the caption as any other.

        alphas (B, T, N), valid (B, T) -> sum over the batch of sum_i (1 - sum_t alpha_ti)^2,
        summing over real steps only; `forward` divides it by the number of predicted words. The paper adds the
        regulariser to the log-likelihood summed over words; the cross-entropy here is a mean per
        word, so the regulariser is one per word too. (Averaged per caption instead, it outweighs
        the caption loss about T times and, on grids larger than the caption is long, pushes every
        word's attention to spread out.)
        """
        attention_per_position = (alphas.float() * valid.unsqueeze(-1)).sum(dim=1)  # (B, N)
        per_caption = ((1.0 - attention_per_position) ** 2).sum(dim=1)  # (B,)
        return per_caption.sum()
