"""The recurrent core: explicit equations against torch.nn, step against sequence, padding."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from recurrent.core import CELLS, RecurrentCore

INPUT, HIDDEN, BATCH, STEPS = 5, 7, 4, 6
CASES = list(itertools.product(CELLS, [1, 2, 3], [False, True], [False, True]))


def make_pair(cell: str, num_layers: int) -> tuple[RecurrentCore, RecurrentCore]:
    torch.manual_seed(0)
    fused = RecurrentCore(cell, INPUT, HIDDEN, num_layers, dropout=0.3, backend="fused").eval()
    explicit = RecurrentCore(
        cell, INPUT, HIDDEN, num_layers, dropout=0.3, backend="explicit"
    ).eval()
    explicit.load_state_dict(fused.state_dict())  # same names and shapes: moves unchanged
    return fused, explicit


def inputs(core: RecurrentCore, with_state: bool, with_lengths: bool):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, STEPS, INPUT, generator=generator)
    state = None
    if with_state:
        state = torch.randn(core.state_parts, core.num_layers, BATCH, HIDDEN, generator=generator)
    lengths = torch.tensor([STEPS, 3, 1, 5]) if with_lengths else None
    return x, state, lengths


@pytest.mark.parametrize("cell,num_layers,with_state,with_lengths", CASES)
def test_explicit_matches_fused(cell, num_layers, with_state, with_lengths):
    fused, explicit = make_pair(cell, num_layers)
    x, state, lengths = inputs(fused, with_state, with_lengths)
    results = []
    for core in (fused, explicit):
        xi = x.clone().requires_grad_()
        si = None if state is None else state.clone().requires_grad_()
        out, final = core(xi, si, lengths)
        # A loss touching every output and the final state, so all gradients flow.
        (out.sin().sum() + final.cos().sum()).backward()
        grads = {name: p.grad.clone() for name, p in core.named_parameters()}
        results.append((out, final, xi.grad, None if si is None else si.grad, grads))
    (out_f, fin_f, gx_f, gs_f, grads_f), (out_e, fin_e, gx_e, gs_e, grads_e) = results
    torch.testing.assert_close(out_e, out_f, atol=1e-5, rtol=0)
    torch.testing.assert_close(fin_e, fin_f, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx_e, gx_f, atol=1e-5, rtol=0)
    if gs_f is not None:
        torch.testing.assert_close(gs_e, gs_f, atol=1e-5, rtol=0)
    assert grads_f.keys() == grads_e.keys()
    for name in grads_f:
        torch.testing.assert_close(grads_e[name], grads_f[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_explicit_matches_raw_torch_module(cell):
    """The fused backend is torch.nn; check the explicit equations against a bare torch.nn module."""
    torch.manual_seed(3)
    reference = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        INPUT, HIDDEN, num_layers=2, batch_first=True
    )
    explicit = RecurrentCore(cell, INPUT, HIDDEN, 2, backend="explicit")
    explicit.rnn.load_state_dict(reference.state_dict())
    x = torch.randn(BATCH, STEPS, INPUT)
    expected, hx = reference(x)
    out, state = explicit(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    expected_h = hx[0] if cell == "lstm" else hx
    torch.testing.assert_close(state[0], expected_h, atol=1e-5, rtol=0)
    if cell == "lstm":
        torch.testing.assert_close(state[1], hx[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("backend", ["fused", "explicit"])
@pytest.mark.parametrize("cell", CELLS)
def test_step_by_step_equals_sequence(cell, backend, grad):
    """Also without gradients, where the fused LSTM decodes a single step with the equations
    (faster than oneDNN's kernel at T = 1 on the CPU)."""
    torch.manual_seed(0)
    core = RecurrentCore(cell, INPUT, HIDDEN, 2, backend=backend).eval()
    x, state, _ = inputs(core, with_state=True, with_lengths=False)
    out, final = core(x, state)
    step_state = state
    step_outputs = []
    for t in range(STEPS):
        with torch.set_grad_enabled(grad):
            y, step_state = core.step(x[:, t], step_state)
        step_outputs.append(y)
    torch.testing.assert_close(torch.stack(step_outputs, 1), out, atol=1e-6, rtol=0)
    torch.testing.assert_close(step_state, final, atol=1e-6, rtol=0)
    torch.testing.assert_close(RecurrentCore.top_hidden(final), out[:, -1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("rows", [4, 40])
def test_lstm_steps_with_gradients_match_the_kernel(rows):
    """With gradients a one-step fused LSTM call runs the equations whatever the number of rows
    (more than the no-gradient limit here): the outputs and every gradient of a step-by-step loop
    match oneDNN's kernel run over the whole sequence."""
    torch.manual_seed(0)
    core = RecurrentCore("lstm", INPUT, HIDDEN, 2, backend="fused").eval()
    x = torch.randn(rows, STEPS, INPUT)
    state = torch.randn(2, 2, rows, HIDDEN)
    results = []
    for stepwise in (False, True):
        core.zero_grad()
        xi, si = x.clone().requires_grad_(), state.clone().requires_grad_()
        if stepwise:
            outputs, final = [], si
            for t in range(STEPS):
                y, final = core.step(xi[:, t], final)
                outputs.append(y)
            out = torch.stack(outputs, 1)
        else:
            out, final = core(xi, si)
        (out.sin().sum() + final.cos().sum()).backward()
        grads = [p.grad.clone() for p in core.parameters()]
        results.append((out, final, xi.grad, si.grad, *grads))
    for whole, stepwise in zip(*results, strict=True):
        torch.testing.assert_close(stepwise, whole, atol=1e-5, rtol=1e-5)


def test_bf16_lstm_steps_give_each_row_the_same_bits_in_any_batch():
    """Decoding in bf16 (CPU autocast, no gradients): a one-step fused LSTM call gives a row the
    same bits in a batch of 200 (more than the fp32 limit of the equations) as in batches of 5, so
    batched beam search finds exactly the captions of one image at a time. oneDNN's bf16 kernel,
    which ran such batches before, rounds a row differently with the batch size (by up to 1e-2
    here). The result stays torch.nn.LSTM's function to bf16 precision."""
    torch.manual_seed(0)
    core = RecurrentCore("lstm", 96, 128, 2, backend="fused").eval()
    x, state = torch.randn(200, 96), 0.5 * torch.randn(2, 2, 200, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, new_state = core.step(x, state)
        parts = [core.step(x[i : i + 5], state[:, :, i : i + 5]) for i in range(0, 200, 5)]
    assert torch.equal(out, torch.cat([part[0] for part in parts]))
    assert torch.equal(new_state, torch.cat([part[1] for part in parts], dim=2))
    with torch.no_grad():
        reference, (h, c) = core.rnn(x.unsqueeze(1), (state[0], state[1]))
    torch.testing.assert_close(out.float(), reference[:, 0], atol=0.03, rtol=0)
    torch.testing.assert_close(new_state, torch.stack([h, c]), atol=0.03, rtol=0)


@pytest.mark.parametrize("backend", ["fused", "explicit"])
@pytest.mark.parametrize("cell", CELLS)
def test_padded_batch_equals_each_sequence_alone(cell, backend):
    torch.manual_seed(0)
    core = RecurrentCore(cell, INPUT, HIDDEN, 2, backend=backend).eval()
    x, state, lengths = inputs(core, with_state=True, with_lengths=True)
    # Garbage in the padding must change nothing.
    for b, n in enumerate(lengths.tolist()):
        x[b, n:] = 1e3
    out, final = core(x, state, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone_out, alone_final = core(x[b : b + 1, :n], state[:, :, b : b + 1].contiguous())
        torch.testing.assert_close(out[b : b + 1, :n], alone_out, atol=1e-6, rtol=0)
        torch.testing.assert_close(final[:, :, b : b + 1], alone_final, atol=1e-6, rtol=0)
        assert torch.all(out[b, n:] == 0)


@pytest.mark.parametrize("backend", ["fused", "explicit"])
@pytest.mark.parametrize("cell", CELLS)
def test_padded_outputs_keep_every_time_step(cell, backend):
    """Lengths all shorter than the input: the outputs still have its T steps (zeros past each
    length), as the explicit backend's and teacher forcing's (B, T, V) logits need."""
    torch.manual_seed(0)
    core = RecurrentCore(cell, INPUT, HIDDEN, 2, backend=backend).eval()
    x, state, _ = inputs(core, with_state=True, with_lengths=False)
    lengths = torch.tensor([3, 1, 4, 2])  # all < STEPS
    out, final = core(x, state, lengths)
    assert out.shape == (BATCH, STEPS, HIDDEN)
    for b, n in enumerate(lengths.tolist()):
        alone_out, _ = core(x[b : b + 1, :n], state[:, :, b : b + 1].contiguous())
        torch.testing.assert_close(out[b : b + 1, :n], alone_out, atol=1e-6, rtol=0)
        assert torch.all(out[b, n:] == 0)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_never_touches_the_top_layers_outputs(cell):
    """As torch.nn: dropout only between layers. A one-layer core in training mode is the same
    function as in eval mode, and the top layer's outputs of a deeper one are hidden states,
    never dropped to 0 nor scaled past the (-1, 1) of tanh."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, STEPS, INPUT)
    one = RecurrentCore(cell, INPUT, HIDDEN, 1, dropout=0.5, backend="explicit").train()
    trained, _ = one(x)
    evaluated, _ = one.eval()(x)
    torch.testing.assert_close(trained, evaluated, atol=0, rtol=0)
    deep = RecurrentCore(cell, INPUT, HIDDEN, 3, dropout=0.5, backend="explicit").train()
    top, _ = deep(x)
    assert (top != 0).all() and (top.abs() < 1).all()


def test_one_layer_with_dropout_gives_no_torch_warning():
    """torch.nn warns that dropout needs num_layers > 1; a config's dropout with one layer is
    fine here (the models apply it to the core's outputs), so the core asks torch.nn for none."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cell in CELLS:
            RecurrentCore(cell, INPUT, HIDDEN, 1, dropout=0.5)


def test_bf16_lstm_steps_are_the_equations_bit_for_bit():
    """Without gradients under CPU autocast a one-step fused LSTM call runs the explicit backend's
    equations (the bits of a row then never depend on the batch, whatever oneDNN's kernel does on
    this CPU), with or without a state given, below and above the fp32 row limit."""
    torch.manual_seed(0)
    fused = RecurrentCore("lstm", INPUT, HIDDEN, 2, backend="fused").eval()
    explicit = RecurrentCore("lstm", INPUT, HIDDEN, 2, backend="explicit").eval()
    explicit.load_state_dict(fused.state_dict())
    for rows in (3, 40):
        x, state = torch.randn(rows, INPUT), 0.5 * torch.randn(2, 2, rows, HIDDEN)
        for given in (state, None):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                out_f, state_f = fused.step(x, given)
                out_e, state_e = explicit.step(x, given)
            assert torch.equal(out_f, out_e) and torch.equal(state_f, state_e), rows


def test_state_dict_keys_are_torch_names():
    core = RecurrentCore("lstm", INPUT, HIDDEN, 2, backend="explicit")
    assert sorted(core.state_dict()) == sorted(
        f"rnn.{kind}_{part}_l{layer}"
        for kind in ("weight", "bias")
        for part in ("ih", "hh")
        for layer in range(2)
    )


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    core = RecurrentCore("gru", INPUT, HIDDEN, 2, dropout=0.5, backend="explicit")
    x = torch.randn(BATCH, STEPS, INPUT)
    core.train()
    a, _ = core(x)
    b, _ = core(x)
    assert not torch.allclose(a, b)  # dropout between layers is active while training
    core.eval()
    c, _ = core(x)
    d, _ = core(x)
    torch.testing.assert_close(c, d)


def test_rejects_unknown_cell_and_backend():
    with pytest.raises(ValueError, match="cell"):
        RecurrentCore("transformer", 3, 4)
    with pytest.raises(ValueError, match="backend"):
        RecurrentCore("lstm", 3, 4, backend="cuda")
