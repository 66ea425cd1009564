"""The one recurrent core both tasks use: Elman RNN, LSTM and GRU, stacked, batch-first.

Two interchangeable backends compute the same function with the same parameters:

- ``fused`` hands the whole sequence to ``torch.nn.RNN/LSTM/GRU``, so cuDNN / oneDNN kernels run.
- ``explicit`` writes the equations of the PyTorch documentation out, one time step at a time,
  for reading, teaching and trying variants.

Both read the parameters of one ``torch.nn.RNN/LSTM/GRU`` module held as ``self.rnn``, so the
state_dict keys (``rnn.weight_ih_l0``, ``rnn.bias_hh_l1``, ...) and shapes are the same and a
state_dict moves between backends unchanged.

State is one tensor of shape ``(S, L, B, H)`` for every cell: ``S`` is 2 for LSTM (hidden ``h`` and
cell ``c``) and 1 for RNN and GRU, ``L`` the number of layers. Callers never special-case LSTM:
they reorder beams with ``state.index_select(2, idx)``, detach with ``state.detach()``, and read the
top layer's hidden output with ``RecurrentCore.top_hidden(state)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

Cell = Literal["rnn", "lstm", "gru"]
Backend = Literal["fused", "explicit"]

CELLS: tuple[str, ...] = ("rnn", "lstm", "gru")
BACKENDS: tuple[str, ...] = ("fused", "explicit")
_TORCH_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
# A one-step LSTM call on the CPU runs the equations, not oneDNN's kernel, whenever gradients are
# wanted (teacher-forced attention decoding, self-critical sampling: oneDNN's one-step backward is
# slow), under low-precision autocast (decoding in bf16: there the equations give every row the
# same bits whatever else is in the batch, and oneDNN's kernel does not) and, otherwise, up to this
# many rows: faster up to about 64 rows, slower from there (bench/decode_step.py).
EQUATIONS_MAX_ROWS = 32


# --- single time steps: the equations of the torch.nn.RNN / LSTM / GRU documentation -------------
# Each takes the input projection x_t W_ih^T + b_ih already computed (for the whole sequence at
# once, which is one large matrix product) and the recurrent weights.


def rnn_cell(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """Elman RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh).  x_proj, h: (B, H)."""
    return torch.tanh(x_proj + F.linear(h, w_hh, b_hh))


def lstm_cell(
    x_proj: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """LSTM, gates in PyTorch's order (input, forget, cell, output).  x_proj: (B, 4H); h, c: (B, H).

    i = σ(W_ii x + b_ii + W_hi h + b_hi)    f = σ(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg) o = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f ⊙ c + i ⊙ g                       h' = o ⊙ tanh(c')
    """
    gates = x_proj + F.linear(h, w_hh, b_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_next = torch.sigmoid(o) * torch.tanh(c_next)
    return h_next, c_next


def gru_cell(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """GRU, gates in PyTorch's order (reset, update, new).  x_proj: (B, 3H); h: (B, H).

    r = σ(W_ir x + b_ir + W_hr h + b_hr)    z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))      # reset gate applied to W_hn h + b_hn
    h' = (1 - z) ⊙ n + z ⊙ h
    """
    h_proj = F.linear(h, w_hh, b_hh)  # (B, 3H)
    x_r, x_z, x_n = x_proj.chunk(3, dim=1)
    h_r, h_z, h_n = h_proj.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


class RecurrentCore(nn.Module):
    """Stacked RNN / LSTM / GRU over batch-first sequences, with a fused or an explicit backend.

    ``forward(x, state=None, lengths=None) -> (outputs, state)`` runs a whole sequence:
    x (B, T, input_size) -> outputs (B, T, hidden_size) of the top layer, state (S, L, B, H).
    With ``lengths`` (B,), positions at or past a sequence's length are padding: they never change
    that sequence's final state and their outputs are zero.

    ``step(x_t, state) -> (output_t, state)`` runs one time step: x_t (B, input_size).
    Dropout (training only) is applied to the outputs of every layer but the last, as torch.nn does.
    """

    def __init__(
        self,
        cell: Cell,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        backend: Backend = "fused",
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.cell = cell
        self.backend = backend
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.state_parts = 2 if cell == "lstm" else 1
        # The parameter container for both backends (and the fused backend's kernel).
        self.rnn = _TORCH_MODULES[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        # bf16 copies of the weights kept for decoding without gradients: _low_precision_weights
        self._low_copies: tuple[tuple, dict[str, Tensor]] | None = None

    # --- state helpers --------------------------------------------------------------------------

    def init_state(self, batch_size: int, like: Tensor) -> Tensor:
        """Zero state (S, L, B, H) on the device and dtype of ``like``."""
        return like.new_zeros(self.state_parts, self.num_layers, batch_size, self.hidden_size)

    @staticmethod
    def top_hidden(state: Tensor) -> Tensor:
        """Hidden output of the top layer, (B, H)."""
        return state[0, -1]

    # --- forward over a sequence ----------------------------------------------------------------

    def forward(
        self, x: Tensor, state: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if state is None:
            state = self.init_state(x.size(0), x)
        if self.backend == "fused":
            return self._forward_fused(x, state, lengths)
        outputs, new_state = self._forward_explicit(x, state, lengths)
        # the state in the dtype it came in, as the fused backend's (an RNN's h is bf16 under
        # autocast, and a character model carries it from window to window)
        return outputs, new_state.to(state.dtype)

    def step(self, x_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step: x_t (B, input_size) -> output (B, H), state (S, L, B, H)."""
        outputs, state = self(x_t.unsqueeze(1), state)
        return outputs.squeeze(1), state

    def _forward_fused(
        self, x: Tensor, state: Tensor, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if (
            self.cell == "lstm"
            and x.device.type == "cpu"
            and x.size(1) == 1
            and lengths is None
            and (
                torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu")
                or x.size(0) <= EQUATIONS_MAX_ROWS
            )
        ):
            # One time step: oneDNN's LSTM has a large fixed cost per call (2 x 512 units, batch 1,
            # float32: 5.6 ms against 0.56 ms for the equations written out), and its one-step
            # backward is slower than the equations' at every size measured in bf16 and up to 64
            # rows in fp32 (about equal from there; bench/decode_step.py). Both compute
            # torch.nn.LSTM's function. In bf16 the kernel rounds a row differently with the
            # batch's size, enough to turn near-ties between beams (bench/beam_search.py); the
            # equations' bf16 products and float32 cell state do not depend on the other rows.
            outputs, new_state = self._forward_explicit(x, state, None)
            return outputs, new_state.to(state.dtype)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # torch.nn's RNN modules refuse inputs of another dtype than their weights, and CPU
            # autocast does not cast them: the cell runs on low-precision copies of the float32
            # weights (the gradients flow back to the float32 weights, as autocast's own casts
            # do), so oneDNN's bf16 kernels run. The outputs stay low precision, as autocast's
            # do; the state comes back in the dtype it came in.
            low = torch.get_autocast_dtype("cpu")
            weights = self._low_precision_weights(low)
            with torch.autocast("cpu", enabled=False):
                outputs, new_state = self._run_fused(x.to(low), state.to(low), lengths, weights)
            return outputs, new_state.to(state.dtype)
        if (
            x.device.type == "cuda"
            and torch.is_autocast_enabled("cuda")
            and torch.get_autocast_dtype("cuda") != torch.float16
        ):
            # CUDA autocast runs cuDNN's RNNs in float16 whatever dtype it was asked for
            # (aten/src/ATen/cudnn/AutocastRNN.cpp), without the gradient scaler float16 needs:
            # under bf16 the cell runs in float32 outside autocast, the rest in bf16.
            with torch.autocast("cuda", enabled=False):
                outputs, new_state = self._run_fused(x.float(), state.float(), lengths)
            return outputs, new_state.to(state.dtype)
        return self._run_fused(x, state, lengths)

    def _low_precision_weights(self, dtype: torch.dtype) -> dict[str, Tensor]:
        """``dtype`` copies of the cell's weights: made at every call while gradients are wanted
        (the casts are part of the graph), and kept from call to call without them (decoding runs
        the cell once per token) until a weight is replaced or changed in place."""
        weights = dict(self.rnn.named_parameters())
        if torch.is_grad_enabled():
            return {name: w.to(dtype) for name, w in weights.items()}
        key = (dtype, *((w.data_ptr(), w._version) for w in weights.values()))
        if self._low_copies is None or self._low_copies[0] != key:
            copies = {name: w.detach().to(dtype) for name, w in weights.items()}
            self._low_copies = (key, copies)
        return self._low_copies[1]

    def _run_fused(
        self,
        x: Tensor,
        state: Tensor,
        lengths: Tensor | None,
        weights: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``self.rnn`` over the sequence, with ``weights`` in place of its parameters if given."""

        def rnn(inputs, hx):
            if weights is None:
                return self.rnn(inputs, hx)
            return functional_call(self.rnn, weights, (inputs, hx))

        hx = (state[0], state[1]) if self.cell == "lstm" else state[0]
        if lengths is None:
            outputs, hx = rnn(x, hx)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_out, hx = rnn(packed, hx)
            outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.size(1))
        new_state = torch.stack(hx) if self.cell == "lstm" else hx.unsqueeze(0)
        return outputs, new_state

    def _forward_explicit(
        self, x: Tensor, state: Tensor, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        batch, steps, _ = x.shape
        # valid[t] is (B, 1): True where step t is inside the sequence.
        valid = None
        if lengths is not None:
            positions = torch.arange(steps, device=x.device)
            valid = (positions[None, :] < lengths.to(x.device)[:, None]).T.unsqueeze(
                -1
            )  # (T, B, 1)
        layer_input = x
        final_states = []
        for layer in range(self.num_layers):
            w_ih = getattr(self.rnn, f"weight_ih_l{layer}")
            w_hh = getattr(self.rnn, f"weight_hh_l{layer}")
            b_ih = getattr(self.rnn, f"bias_ih_l{layer}")
            b_hh = getattr(self.rnn, f"bias_hh_l{layer}")
            x_proj = F.linear(layer_input, w_ih, b_ih)  # (B, T, G*H), all steps in one product
            h = state[0, layer]
            c = state[1, layer] if self.cell == "lstm" else None
            outputs = []
            for t in range(steps):
                if self.cell == "lstm":
                    h_next, c_next = lstm_cell(x_proj[:, t], h, c, w_hh, b_hh)
                elif self.cell == "gru":
                    h_next, c_next = gru_cell(x_proj[:, t], h, w_hh, b_hh), None
                else:
                    h_next, c_next = rnn_cell(x_proj[:, t], h, w_hh, b_hh), None
                if valid is not None:  # padding keeps the old state and outputs zeros
                    h_next = torch.where(valid[t], h_next, h)
                    if c_next is not None:
                        c_next = torch.where(valid[t], c_next, c)
                    outputs.append(h_next * valid[t])
                else:
                    outputs.append(h_next)
                h, c = h_next, c_next
            layer_output = torch.stack(outputs, dim=1)  # (B, T, H)
            final_states.append((h, c) if self.cell == "lstm" else (h,))
            is_last = layer == self.num_layers - 1
            if not is_last and self.dropout > 0:
                layer_output = F.dropout(layer_output, self.dropout, self.training)
            layer_input = layer_output
        # (S, L, B, H)
        new_state = torch.stack(
            [torch.stack([s[part] for s in final_states]) for part in range(self.state_parts)]
        )
        return layer_input, new_state

    def extra_repr(self) -> str:
        return f"cell={self.cell}, backend={self.backend}"
