"""The character-level language model: data, model, training, resume, generation, evaluation."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from char_lm.config import CharLMConfig, DataConfig, ModelConfig
from char_lm.data import (
    BUILTIN_TEXTS,
    IGNORE_INDEX,
    StreamBatches,
    build_vocab,
    encode,
    load_corpus,
    load_text,
    read_text,
    split_ids,
)
from char_lm.generate import generate, load_char_lm
from char_lm.model import CharLM
from char_lm.scoring import evaluate_text
from char_lm.train import StreamWalk, train
from recurrent.checkpoint import load_checkpoint, save_checkpoint
from recurrent.config import load_config, to_dict
from recurrent.distributed import Distributed
from recurrent.errors import UserError
from recurrent.precision import Precision
from recurrent.sampling import filter_logits

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "char_lm"
SHIP = BUILTIN_TEXTS["ship"]


def config(name: str = "tiny", *overrides: str) -> CharLMConfig:
    return load_config(CharLMConfig, CONFIGS / f"{name}.yaml", overrides)


def greedy(checkpoint: Path, prompt: str, length: int) -> str:
    model, vocab, _ = load_char_lm(checkpoint)
    return prompt + "".join(generate(model, vocab, prompt, length, greedy=True))


def random_model(cfg: ModelConfig, vocab_size: int, seed: int = 0) -> CharLM:
    torch.manual_seed(seed)
    return CharLM(cfg, vocab_size).eval()


# --- the lecture toys ----------------------------------------------------------------------------


def test_hihello_learns_to_continue_h(tmp_path):
    summary = train(config("hihello"), tmp_path)
    assert summary["steps"] == 100
    assert greedy(tmp_path / "best.pt", "h", 6) == "hihello"


def test_ship_sentence_is_reproduced_from_its_first_ten_characters(tmp_path):
    cfg = config("ship")
    assert (cfg.model.cell, cfg.model.num_layers, cfg.data.block_size) == ("lstm", 2, 10)
    train(cfg, tmp_path)
    assert greedy(tmp_path / "last.pt", SHIP[:10], len(SHIP) - 10) == SHIP


# --- model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
def test_initial_loss_is_about_ln_vocab_size(cell, input_kind):
    vocab_size = 65
    model = random_model(ModelConfig(input=input_kind, cell=cell, hidden_size=64), vocab_size)
    idx = torch.randint(0, vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    logits, loss, state = model(idx, idx)
    assert logits.shape == (4, 32, vocab_size)
    assert state.shape == ((2 if cell == "lstm" else 1), 2, 4, 64)
    assert abs(loss.item() - math.log(vocab_size)) < 0.1


def test_one_batch_can_be_overfit():
    torch.manual_seed(0)
    model = CharLM(
        ModelConfig(cell="lstm", num_layers=1, hidden_size=32, embed_size=16, dropout=0), 10
    )
    idx = torch.randint(0, 10, (4, 17))
    inputs, targets = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        _, loss, _ = model(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05  # from ln 10 = 2.3


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_explicit_and_fused_backends_give_the_same_loss(cell):
    cfg = ModelConfig(input="embedding", cell=cell, num_layers=2, hidden_size=16, embed_size=8)
    fused = random_model(cfg, 12)
    explicit = CharLM(dataclasses.replace(cfg, backend="explicit"), 12).eval()
    explicit.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 12, (3, 9), generator=torch.Generator().manual_seed(1))
    logits_f, loss_f, state_f = fused(idx, idx)
    logits_e, loss_e, state_e = explicit(idx, idx)
    torch.testing.assert_close(loss_e, loss_f, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_e, logits_f, atol=1e-5, rtol=0)
    torch.testing.assert_close(state_e, state_f, atol=1e-5, rtol=0)


def test_carried_state_makes_windows_equal_one_long_sequence():
    model = random_model(ModelConfig(cell="gru", num_layers=2, hidden_size=16, embed_size=8), 9)
    idx = torch.randint(0, 9, (2, 12), generator=torch.Generator().manual_seed(2))
    whole, _, _ = model(idx)
    first, _, state = model(idx[:, :5])
    second, _, _ = model(idx[:, 5:], state=state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=0)
    fresh, _, _ = model(idx[:, 5:])  # without the state the second window is different
    assert not torch.allclose(fresh, second, atol=1e-3)


@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
def test_onehot_and_embedding_inputs_both_train(tmp_path, input_kind):
    cfg = config(
        "tiny",
        f"model.input={input_kind}",
        "model.hidden_size=32",
        "data.val_fraction=0",
        "train.max_steps=150",
        "train.eval_every=150",
        "train.lr=0.02",
    )
    summary = train(cfg, tmp_path)
    vocab_size = len(build_vocab(SHIP))
    assert summary["final_train_loss"] < math.log(vocab_size) - 1.0
    assert summary["final_val_loss"] < math.log(vocab_size) - 1.0
    weights = load_checkpoint(tmp_path / "last.pt")["model"]
    assert ("embedding.weight" in weights) == (input_kind == "embedding")


# --- data ----------------------------------------------------------------------------------------


def test_stream_batches_are_contiguous_windows_of_parallel_streams():
    ids = torch.arange(103)
    batches = StreamBatches(ids, batch_size=4, block_size=7)
    assert batches.stream_length == 25 and len(batches) == 4  # 7 + 7 + 7 + 4 columns
    windows = [batches.window(i) for i in range(len(batches))]
    assert [w[0].shape[1] for w in windows] == [7, 7, 7, 4]
    for stream in range(4):
        inputs = torch.cat([w[0][stream] for w in windows])
        targets = torch.cat([w[1][stream] for w in windows])
        # One contiguous run of the text per stream, each target the character after its input.
        assert inputs.tolist() == list(range(stream * 25, stream * 25 + 25))
        assert targets.tolist() == (inputs + 1).tolist()
    # Consecutive windows of a stream follow each other in the text.
    assert (windows[1][0][:, 0] == windows[0][0][:, -1] + 1).all()


def test_evaluation_streams_predict_every_character_exactly_once():
    ids = torch.arange(50)
    batches = StreamBatches(ids, batch_size=4, block_size=5, cover_all=True)
    targets = batches.targets.flatten()
    inputs = batches.inputs.flatten()[targets != IGNORE_INDEX]
    assert sorted(targets[targets != IGNORE_INDEX].tolist()) == list(range(1, 50))
    assert (targets[targets != IGNORE_INDEX] == inputs + 1).all()
    padding = batches.inputs.flatten()[targets == IGNORE_INDEX]
    assert len(padding) == 4 * 13 - 49 and (padding == 0).all()  # padding has input 0
    # A text shorter than the batch: one stream per target, not batch_size streams of padding.
    short = StreamBatches(torch.arange(4), batch_size=8, block_size=5, cover_all=True)
    assert short.streams == 3 and short.targets.tolist() == [[1], [2], [3]]
    with pytest.raises(UserError, match="has 1 character"):
        StreamBatches(torch.arange(1), batch_size=8, block_size=5, cover_all=True)


@pytest.mark.parametrize("backend", ["fused", "explicit"])
def test_dropout_on_the_cores_output_also_for_one_layer(backend):
    """`model.dropout` (between stacked layers and on the core's output): a one-layer model drops
    out its core's output while training, once (the explicit core leaves its top layer alone, as
    torch.nn does), and never in eval mode."""
    cfg = ModelConfig(cell="gru", num_layers=1, hidden_size=16, embed_size=8, dropout=0.5)
    model = random_model(dataclasses.replace(cfg, backend=backend), 7)
    ids = torch.randint(0, 7, (2, 9), generator=torch.Generator().manual_seed(0))
    outputs, _ = model.core(model.embedding(ids))
    model.train()
    core_outputs = [model.core(model.embedding(ids))[0] for _ in range(2)]
    assert all(torch.equal(out, outputs) for out in core_outputs)  # no dropout inside one layer
    torch.manual_seed(1)
    first = model(ids)[0]
    torch.manual_seed(1)
    mask = F.dropout(torch.ones_like(outputs), 0.5, training=True)
    torch.testing.assert_close(first, model.head(outputs * mask))
    model.eval()
    torch.testing.assert_close(model(ids)[0], model.head(outputs))


def test_an_input_that_is_neither_onehot_nor_embedding_is_refused():
    """A config built in code is not checked against its Literal: the model refuses it itself
    (it fed one-hot vectors for any other word)."""
    with pytest.raises(ValueError, match="model.input must be onehot or embedding, got 'bytes'"):
        CharLM(ModelConfig(input="bytes"), 7)


def test_dropout_between_two_layers_draws_as_torch_nn_lstm():
    """A two-layer model in training drops out between its core's layers exactly as
    torch.nn.LSTM with that dropout does (the same draws under the same seed), then its output."""
    cfg = ModelConfig(cell="lstm", num_layers=2, hidden_size=16, embed_size=8, dropout=0.5)
    model = random_model(cfg, 7).train()
    reference = torch.nn.LSTM(8, 16, num_layers=2, dropout=0.5, batch_first=True)
    reference.load_state_dict(model.core.rnn.state_dict())
    ids = torch.randint(0, 7, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    logits = model(ids)[0]
    torch.manual_seed(1)
    outputs, _ = reference(model.embedding(ids))
    mask = F.dropout(torch.ones_like(outputs), 0.5, training=True)
    torch.testing.assert_close(logits, model.head(outputs * mask))


def test_evaluate_text_is_the_exact_mean_over_all_predictions():
    model = random_model(ModelConfig(cell="lstm", num_layers=1, hidden_size=16, embed_size=8), 7)
    ids = torch.randint(0, 7, (61,), generator=torch.Generator().manual_seed(3))
    logits, _, _ = model(ids[None, :-1])
    reference = F.cross_entropy(logits[0], ids[1:]).item()
    loss, count = evaluate_text(model, ids, block_size=8)  # one stream, state carried
    assert count == 60
    assert loss == pytest.approx(reference, abs=1e-5)
    _, count3 = evaluate_text(model, ids, block_size=8, streams=3)
    assert count3 == 60
    # 7 streams of 9 (the last one padded: 6 predictions), each walked from a zero state
    loss7, count7 = evaluate_text(model, ids, block_size=4, streams=7)
    total = 0.0
    for start in range(0, 60, 9):
        end = min(start + 9, 60)
        logits, _, _ = model(ids[None, start:end])
        total += F.cross_entropy(logits[0], ids[start + 1 : end + 1], reduction="sum").item()
    assert count7 == 60 and loss7 == pytest.approx(total / 60, abs=1e-5)
    # max_windows (train.eval_batches) takes the first windows only; the model's mode is kept
    model.eval()
    assert evaluate_text(model, ids, block_size=4, streams=3, max_windows=1)[1] == 3 * 4
    assert not model.training
    model.train()
    evaluate_text(model, ids, block_size=4, streams=3)
    assert model.training


def test_evaluate_text_scores_a_model_in_training_mode_without_dropout():
    """A model left in training mode (training validates between steps) is scored as in eval
    mode, its dropout off, and is handed back in training mode (kills: `model.eval()` dropped)."""
    cfg = ModelConfig(cell="gru", num_layers=2, hidden_size=16, embed_size=8, dropout=0.5)
    model = random_model(cfg, 7)
    ids = torch.randint(0, 7, (41,), generator=torch.Generator().manual_seed(5))
    logits, _, _ = model(ids[None, :-1])  # eval mode: no dropout
    reference = F.cross_entropy(logits[0], ids[1:]).item()
    model.train()
    loss, count = evaluate_text(model, ids, block_size=8)
    assert count == 40 and loss == pytest.approx(reference, abs=1e-5)
    assert model.training


def test_evaluate_text_adds_its_windows_losses_in_float64():
    """300 windows of one character: the mean is the windows' float32 sums added in float64, as a
    plain loop over the same windows adds them (a float32 total was 7e-7 off already; on a book
    of a million characters the error grows with every window)."""
    model = random_model(ModelConfig(cell="lstm", num_layers=1, hidden_size=16, embed_size=8), 7)
    ids = torch.randint(0, 7, (301,), generator=torch.Generator().manual_seed(3))
    loss, count = evaluate_text(model, ids, block_size=1)
    total, state = 0.0, None
    with torch.no_grad():
        for i in range(300):
            logits, _, state = model(ids[None, i : i + 1], state=state)
            total += F.cross_entropy(logits[0], ids[i + 1 : i + 2], reduction="sum").item()
    assert count == 300 and loss == total / 300


def test_evaluate_text_names_the_text_too_short_to_score():
    """The caller's name for the text reaches the line (training passes "validation text")."""
    model = random_model(ModelConfig(cell="rnn", num_layers=1, hidden_size=4, embed_size=4), 3)
    with pytest.raises(UserError, match=r"^the validation text has 1 character\(s\); it needs"):
        evaluate_text(model, torch.tensor([1]), 4, what="validation text")


def test_training_carries_the_state_across_windows_and_resets_it_on_wrap_around(tmp_path):
    # A 2-stream, 2-window text: step 1 uses window 0, step 2 window 1, step 3 window 0 again.
    text = "abcdefghij" * 4  # 40 characters: 2 streams of 19, windows of 10 and 9
    (tmp_path / "t.txt").write_text(text)
    base = [
        f"data.path={tmp_path / 't.txt'}",
        "data.val_fraction=0",
        "data.block_size=10",
        "data.batch_size=2",
        "model.dropout=0",
        "train.eval_every=1",
    ]
    states, models = {}, {}
    for step in (1, 2, 3):
        train(config("tiny", *base, f"train.max_steps={step}"), tmp_path / "run", resume=step > 1)
        payload = load_checkpoint(tmp_path / "run" / "last.pt")
        assert payload["data"][0]["position"] == step % 2
        states[step] = payload["data"][0]["state"]
        models[step] = CharLM(config("tiny", *base).model, len(payload["vocab"])).eval()
        models[step].load_state_dict(payload["model"])
    batches = StreamBatches(encode(text, build_vocab(text)), 2, 10)
    window0, window1 = batches.window(0)[0], batches.window(1)[0]
    with torch.no_grad():
        carried = models[1](window1, state=states[1])[2]
        fresh = models[1](window1)[2]
        after_wrap = models[2](window0)[2]
    torch.testing.assert_close(states[2], carried, atol=1e-6, rtol=0)
    assert not torch.allclose(states[2], fresh, atol=1e-4)
    torch.testing.assert_close(states[3], after_wrap, atol=1e-6, rtol=0)


def test_split_is_contiguous_and_val_fraction_zero_reuses_train():
    ids = torch.arange(100)
    train_ids, val_ids = split_ids(ids, 0.1)
    assert train_ids.tolist() == list(range(90)) and val_ids.tolist() == list(range(90, 100))
    train_ids, val_ids = split_ids(ids, 0.0)
    assert train_ids is ids and val_ids is ids
    with pytest.raises(UserError, match="validation split has 1 character"):
        split_ids(torch.arange(10), 0.1)
    # The validation split holds at least its fraction (the training split is rounded down).
    for length, fraction in [(10, 0.25), (7, 0.5), (99, 0.1)]:
        train_ids, val_ids = split_ids(torch.arange(length), fraction)
        assert len(val_ids) >= fraction * length and len(train_ids) + len(val_ids) == length
    with pytest.raises(UserError, match="val_fraction must be in"):
        split_ids(torch.arange(10), 1.0)


def test_vocab_is_sorted_unique_characters_and_unknown_ones_are_named():
    vocab = build_vocab("hihello")
    assert vocab == ["e", "h", "i", "l", "o"]
    assert encode("hello", vocab).tolist() == [1, 0, 3, 3, 4]
    with pytest.raises(UserError, match=r"2 character\(s\).*'x' \(U\+0078\), 'z' \(U\+007A\)"):
        encode("hexzoo", vocab, what="prompt")


def test_bad_text_files_are_user_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="is empty"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="not UTF-8"):
        read_text(tmp_path / "latin1.txt")
    with pytest.raises(UserError, match="not found"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="unknown built-in text 'builtin:nope'"):
        read_text("builtin:nope")
    with pytest.raises(UserError, match="needs at least 65"):
        StreamBatches(torch.arange(64), batch_size=4, block_size=16)


@settings(max_examples=200, deadline=None)
@given(
    chars=st.integers(0, 80),
    batch_size=st.integers(1, 12),
    block_size=st.integers(1, 12),
    processes=st.sampled_from([1, 1, 2, 3, 4, 8]),
)
def test_a_text_too_short_for_its_windows_is_told_settings_that_fit(
    chars, batch_size, block_size, processes
):
    """The line's example settings train on the same text, the length it says the settings need
    is the least they train on, and a one-character text, which no settings fit, is told only to
    be longer. Under torchrun (``processes``) the settings suggested also split over the
    processes (a batch size of 3 for 2 processes stopped the next run); a text too short for
    them all says so and to run fewer."""
    try:
        StreamBatches(
            torch.zeros(chars, dtype=torch.long), batch_size, block_size, processes=processes
        )
    except UserError as err:
        message = str(err)
    else:
        assert chars > batch_size * block_size
        return
    assert chars <= batch_size * block_size
    if chars < 2:
        assert "needs at least 2; use a longer text" in message and "--set" not in message
        return
    if chars - 1 < processes:
        assert message == (
            f"the training text has {chars} characters, too few for {processes} processes: each "
            f"trains on streams of one window at least (needs at least {processes + 1}); use a "
            "longer text, or run fewer processes"
        )
        return
    assert f"at most {chars - 1:,} (e.g. --set " in message
    needed = int(re.search(r"needs at least ([\d,]+)\)", message)[1].replace(",", ""))
    StreamBatches(torch.zeros(needed, dtype=torch.long), batch_size, block_size)  # the least
    with pytest.raises(UserError):
        StreamBatches(torch.zeros(needed - 1, dtype=torch.long), batch_size, block_size)
    fit = dict(batch_size=batch_size, block_size=block_size)
    for setting in message.rsplit("--set ", 1)[1].rstrip(")").split():
        key, value = setting.removeprefix("data.").split("=")
        fit[key] = int(value)
    StreamBatches(torch.zeros(chars, dtype=torch.long), **fit)  # trains
    assert fit["batch_size"] % processes == 0  # and its streams split over the processes


def test_download_is_cached_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("CRNN_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "corpus.txt"
    source.write_text("to be or not to be\n", encoding="utf-8")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    url = source.as_uri()  # file://, never the network
    assert load_text(DataConfig(path="", url=url, sha256=digest)) == "to be or not to be\n"
    source.unlink()  # the second read comes from the cache
    assert load_text(DataConfig(path="", url=url, sha256=digest)) == "to be or not to be\n"
    cached = list((tmp_path / "cache").rglob("*corpus.txt"))
    assert len(cached) == 1
    # a cached copy that lost its digest (a disk error, an edit) is fetched again
    cached[0].write_text("to be or not to bE\n", encoding="utf-8")
    source.write_text("to be or not to be\n", encoding="utf-8")
    assert load_text(DataConfig(path="", url=url, sha256=digest)) == "to be or not to be\n"
    assert cached[0].read_text(encoding="utf-8") == "to be or not to be\n"

    source.write_text("something else\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"sha256 .* not the expected 0+ .*--set data.path="):
        load_text(DataConfig(path="", url=url, sha256="0" * 64))
    assert len(list((tmp_path / "cache").rglob("*"))) == 2  # the folder and the good copy only
    with pytest.raises(UserError, match=r"could not download .*--set data.path=FILE"):
        load_text(DataConfig(path="", url=(tmp_path / "gone.txt").as_uri(), sha256=""))


def test_shakespeare_config_names_the_canonical_download():
    cfg = config("shakespeare")
    assert cfg.data.path == ""
    assert cfg.data.url == (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    )
    assert cfg.data.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


@pytest.mark.parametrize("name", ["hihello", "ship", "shakespeare", "tiny"])
def test_yaml_mirrors_the_dataclass_key_for_key(name):
    import yaml

    data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    defaults = to_dict(CharLMConfig())
    assert {s: sorted(v) for s, v in data.items()} == {s: sorted(v) for s, v in defaults.items()}


# --- checkpoints and resume ----------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    cfg = config("tiny", "model.cell=gru", "model.num_layers=2")
    vocab = build_vocab(SHIP)
    model = random_model(cfg.model, len(vocab))
    payload = {
        "task": "char_lm",
        "config": to_dict(cfg),
        "vocab": vocab,
        "model": model.state_dict(),
    }
    save_checkpoint(payload, tmp_path / "m.pt")
    loaded, loaded_vocab, loaded_cfg = load_char_lm(tmp_path / "m.pt")
    idx = encode(SHIP[:40], vocab)[None]
    assert loaded_vocab == vocab and loaded_cfg == cfg and not loaded.training
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_reported_val_loss_matches_the_saved_checkpoint(tmp_path):
    cfg = config("tiny", "train.max_steps=10", "train.eval_every=10")
    summary = train(cfg, tmp_path)
    model, vocab, _ = load_char_lm(tmp_path / "last.pt")
    _, val_ids = split_ids(encode(SHIP, vocab), cfg.data.val_fraction)
    loss, _ = evaluate_text(model, val_ids, cfg.data.block_size, streams=cfg.data.batch_size)
    assert loss == pytest.approx(summary["final_val_loss"], abs=1e-6)
    assert load_checkpoint(tmp_path / "best.pt")["best_val_loss"] == summary["best_val_loss"]


def test_random_state_resets_restart_drawn_streams_whatever_the_process_layout():
    batches = StreamBatches(torch.arange(801) % 7, 8, 10)  # 8 streams of 100: 10 windows

    def walk(rank: int, world_size: int, reset: float) -> StreamWalk:
        return StreamWalk(
            StreamBatches(batches.ids, 8, 10),
            Distributed(rank, world_size, rank),
            10,
            fp32=True,
            state_reset=reset,
            seed=3,
        )

    def kept(one: StreamWalk) -> list[Tensor]:
        """Per window after the first: 1 where a stream's state went on, 0 where it restarted."""
        masks = []
        one.next_window()  # window 0 starts from zero anyway
        for _ in range(9):
            one.state = torch.ones(2, 1, one.batches.streams, 4)
            one.next_window()
            masks.append(one.state[0, 0, :, 0])
        return masks

    assert all(m.eq(1).all() for m in kept(walk(0, 1, 0.0)))  # 0: plain truncated BPTT
    assert all(m.eq(0).all() for m in kept(walk(0, 1, 1.0)))  # 1: every window from zero
    whole = torch.stack(kept(walk(0, 1, 0.5)))  # (9 windows, 8 streams)
    assert 0.3 < whole.mean() < 0.7 and len({tuple(row.tolist()) for row in whole}) > 1
    halves = [torch.stack(kept(walk(rank, 2, 0.5))) for rank in (0, 1)]
    assert torch.equal(torch.cat(halves, dim=1), whole)  # each process: its streams' draws


def _shares(world: int) -> tuple[list[dict], Tensor]:
    """The saved shares of ``world`` processes' walks over 4 streams, 2 windows in, and the
    whole batch's carried state they hold between them."""
    walks = [
        StreamWalk(StreamBatches(torch.arange(1000) % 50, 4, 10), Distributed(r, world, 0), 10,
                   fp32=True)
        for r in range(world)
    ]  # fmt: skip
    whole = torch.randn(1, 2, 4, 3)  # (S, L, streams, H)
    for walk in walks:
        walk.next_window()
        walk.next_window()
        walk.state = whole[:, :, walk.rows].clone()
    return [walk.state_dict() for walk in walks], whole


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (2, 4), (4, 2)])
def test_a_resume_with_another_number_of_processes_regroups_the_streams(before, after):
    """The shares of the processes that saved join in rank order and split anew: each new
    process gets its streams' carried states and the walk's place."""
    saved, whole = _shares(before)
    for rank in range(after):
        walk = StreamWalk(
            StreamBatches(torch.arange(1000) % 50, 4, 10), Distributed(rank, after, 0), 10,
            fp32=True,
        )  # fmt: skip
        walk.load_state_dicts(saved)
        assert (walk.position, walk.walked) == (2, 2)
        assert torch.equal(walk.state, whole[:, :, walk.rows])
    saved[-1]["state"] = None  # a share without a state: none is carried, the place is kept
    walk = StreamWalk(StreamBatches(torch.arange(1000) % 50, 4, 10), Distributed(0, 1, 0), 10,
                      fp32=True)  # fmt: skip
    walk.load_state_dicts(saved)
    assert walk.position == 2 and walk.state is None


@pytest.mark.parametrize(
    "edit",
    [
        lambda parts: parts[0].update(state=torch.zeros(5)),  # not (S, L, streams, H)
        lambda parts: parts[0].update(state=parts[0]["state"][:, :, :1]),  # not its streams'
        lambda parts: parts[0].update(position="1"),
        lambda parts: parts[0].update(position=10**6),  # beyond the pass
        lambda parts: parts[0].update(walked=1.5),
        lambda parts: parts[0].update(position=-1),
        lambda parts: parts[1].update(position=1),  # shares at different places
        lambda parts: parts.clear(),
    ],
)
def test_stream_shares_no_run_writes_are_refused(edit):
    """An edited checkpoint's stream shares were taken unchecked: a traceback at the resume
    (torch.cat of a 1-D state, no share at all) or in its first step (a position of "1" or
    beyond the pass, a state of other streams). They are a ValueError, which the engine says in
    one line (`tests/test_tampered_checkpoints.py` runs that line)."""
    saved, _ = _shares(2)
    edit(saved)
    walk = StreamWalk(StreamBatches(torch.arange(1000) % 50, 4, 10), Distributed(0, 1, 0), 10,
                      fp32=True)  # fmt: skip
    with pytest.raises(ValueError):
        walk.load_state_dicts(saved)


def test_resume_continues_exactly(tmp_path):
    settings = [
        "model.dropout=0.3",
        "data.state_reset=0.3",
        "model.num_layers=2",
        "train.eval_every=10",
        "train.lr_decay_steps=40",
        "train.warmup_steps=5",
    ]
    straight = train(config("tiny", *settings, "train.max_steps=40"), tmp_path / "a")
    first = train(config("tiny", *settings, "train.max_steps=20"), tmp_path / "b")
    resumed = train(config("tiny", *settings, "train.max_steps=40"), tmp_path / "b", resume=True)
    assert first["steps"] == 20 and resumed["steps"] == 40
    assert resumed["history"] == straight["history"]  # every evaluation, train and val loss
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    # Dropout makes the random-number state matter: another seed's run is not the same.
    other = train(config("tiny", *settings, "train.max_steps=40", "train.seed=1"), tmp_path / "c")
    assert other["history"] != straight["history"]


def test_a_resume_in_another_batch_layout_validates_in_the_runs_own(tmp_path, capsys):
    """data.batch_size and data.block_size may change on resume (training restarts its streams),
    but they also set which validation characters are scored and from how many cold starts:
    the run keeps validating in its first layout, also after a second resume (whose
    checkpoint's config is the first resume's), and says so, so best.pt compares losses of the
    same characters (a resume in 16 streams of 8 scored other characters than the run's 4 of
    16, and best.pt kept a worse model)."""
    settings = ["train.eval_every=5", "train.eval_batches=2"]
    run = tmp_path / "run"
    train(config("tiny", *settings, "train.max_steps=10"), run)
    other = ["data.batch_size=16", "data.block_size=8"]
    capsys.readouterr()
    train(config("tiny", *settings, *other, "train.max_steps=15"), run, resume=True)
    note = "note: validation keeps this run's 4 streams of 16-character windows"
    assert note in capsys.readouterr().out
    again = train(config("tiny", *settings, *other, "train.max_steps=20"), run, resume=True)
    model, _, _ = load_char_lm(run / "last.pt")
    val_ids = load_corpus(config("tiny").data).val_ids

    def val_loss(streams: int, block_size: int) -> float:
        return evaluate_text(model, val_ids, block_size, streams=streams, max_windows=2)[0]

    assert load_checkpoint(run / "last.pt")["val_layout"] == {"streams": 4, "block_size": 16}
    assert again["history"][-1]["val_loss"] == pytest.approx(val_loss(4, 16), abs=1e-6)
    assert abs(val_loss(16, 8) - val_loss(4, 16)) > 1e-3  # the layout does change the measure


@pytest.mark.parametrize(
    ("before", "at", "after", "goes_on"),
    [(16, 3, 8, True), (8, 4, 16, True), (16, 6, 8, True), (8, 3, 16, False), (16, 2, 12, False)],
)
def test_another_block_size_goes_on_from_the_same_character(before, at, after, goes_on, capsys):
    """A walk saved at window `at` of `before` characters, resumed with windows of `after`: where
    the characters walked are a whole number of the new windows, the streams go on from the very
    next character with their carried state; otherwise they restart from the text's beginning
    (they always restarted)."""
    ids = torch.arange(4 * 100 + 1)  # 4 streams of 100 characters (inputs)

    def walk(block_size: int) -> StreamWalk:
        batches = StreamBatches(ids, batch_size=4, block_size=block_size)
        return StreamWalk(batches, Distributed(), block_size, fp32=True)

    saved = walk(before)
    for _ in range(at):
        saved.next_window()
    saved.state = torch.randn(1, 2, 4, 3)  # (S, L, streams, H)
    resumed = walk(after)
    resumed.load_state_dict(saved.state_dict())
    note = capsys.readouterr().out
    inputs, _, _ = resumed.next_window()
    if goes_on:
        assert "the streams go on from the same character" in note
        assert inputs[:, 0].tolist() == [stream * 100 + at * before for stream in range(4)]
        assert torch.equal(resumed.state, saved.state)
    else:
        assert "the streams restart from the beginning of the text" in note
        assert inputs[:, 0].tolist() == [0, 100, 200, 300] and resumed.state is None


def test_another_block_size_at_a_pass_start_keeps_the_windows_walked_and_another_text_restarts(
    capsys,
):
    """A walk saved at a pass's start (window 0, after a whole pass) goes on there with the count
    of windows walked, which the state resets are drawn from; the same number of streams of a
    text of another length restarts (the position's character is another one)."""

    def walk(length: int, block_size: int) -> StreamWalk:
        batches = StreamBatches(torch.arange(4 * length + 1), batch_size=4, block_size=block_size)
        return StreamWalk(batches, Distributed(), block_size, fp32=True, state_reset=0.5)

    saved = walk(100, 16)
    for _ in range(saved.windows):  # a whole pass: back at window 0
        saved.next_window()
    assert (saved.position, saved.walked) == (0, 7)
    resumed = walk(100, 8)
    resumed.load_state_dict(saved.state_dict())
    assert capsys.readouterr().out == (
        "note: data.block_size changed from 16 to 8; the streams go on from the same character, "
        "with their state (window 1 of 13)\n"
    )
    assert (resumed.position, resumed.walked) == (0, 7)
    saved = walk(100, 16)
    for _ in range(4):
        saved.next_window()
    longer = walk(120, 8)  # 4 streams of 120 characters, not 100: window 8 is another place
    longer.load_state_dict(saved.state_dict())
    assert "the streams restart from the beginning" in capsys.readouterr().out
    assert (longer.position, longer.walked, longer.state) == (0, 0, None)


def test_an_older_checkpoint_validates_in_its_configs_window_length(tmp_path):
    """Without a saved layout, both data.batch_size and data.block_size come from the
    checkpoint's config (here a block size of 8 where the resume asks for 16; one stream, since
    tiny's 18 validation characters make 4 streams shorter than either window)."""
    settings = ["train.eval_every=5", "train.eval_batches=2", "data.batch_size=1"]
    run = tmp_path / "run"
    train(config("tiny", *settings, "data.block_size=8", "train.max_steps=10"), run)
    payload = load_checkpoint(run / "last.pt")
    del payload["val_layout"]
    save_checkpoint(payload, run / "last.pt")
    again = train(config("tiny", *settings, "train.max_steps=15"), run, resume=True)
    model, _, _ = load_char_lm(run / "last.pt")
    val_ids = load_corpus(config("tiny").data).val_ids

    def val_loss(block_size: int) -> float:
        return evaluate_text(model, val_ids, block_size, streams=1, max_windows=2)[0]

    assert abs(val_loss(8) - val_loss(16)) > 1e-3
    assert again["history"][-1]["val_loss"] == pytest.approx(val_loss(8), abs=1e-6)


def test_resume_refuses_other_architectures_and_missing_runs(tmp_path):
    train(config("tiny", "train.max_steps=2", "train.eval_every=2"), tmp_path / "run")
    with pytest.raises(UserError, match="model.hidden_size is 16 in the checkpoint but 32"):
        train(config("tiny", "model.hidden_size=32"), tmp_path / "run", resume=True)
    # the saved optimizer state is adamw's; another validation split would train on former
    # validation text, and it or another evaluation size compare best scores measured on two texts
    for change in ("train.optimizer=rmsprop", "data.val_fraction=0.2", "train.eval_batches=3"):
        key = change.partition("=")[0]
        with pytest.raises(UserError, match=rf"{key} is .* in the checkpoint but"):
            train(config("tiny", "train.max_steps=4", change), tmp_path / "run", resume=True)
    with pytest.raises(UserError, match="nothing to resume"):
        train(config("tiny"), tmp_path / "elsewhere", resume=True)
    with pytest.raises(UserError, match="already holds a run"):
        train(config("tiny"), tmp_path / "run")


# --- generation ----------------------------------------------------------------------------------


def sampler_model() -> tuple[CharLM, list[str]]:
    vocab = build_vocab(SHIP)
    return random_model(ModelConfig(cell="lstm", hidden_size=32, embed_size=16), len(vocab)), vocab


def test_sampling_is_deterministic_under_a_seed():
    model, vocab = sampler_model()

    def sample(seed: int) -> str:
        generator = torch.Generator().manual_seed(seed)
        return "".join(generate(model, vocab, "if ", 60, temperature=1.5, generator=generator))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert len(sample(3)) == 60


def test_generation_runs_every_model_call_in_the_precision_it_is_given(monkeypatch):
    """Each model call of bf16 generation runs under bf16 autocast (what that computes is checked
    against torch.nn in tests/test_precision.py), the caller's code between two characters does
    not, and without a precision nothing does."""
    model, vocab = sampler_model()
    calls: list[tuple[bool, torch.dtype]] = []
    forward = model.forward

    def spy(*args, **kwargs):
        calls.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    bf16 = Precision.choose("bf16", torch.device("cpu"))
    for char in generate(
        model, vocab, "the ship ", 20, generator=torch.Generator(), precision=bf16
    ):
        assert char in vocab and not torch.is_autocast_enabled("cpu")
    assert calls == [(True, torch.bfloat16)] * 20  # the prompt, then 19 characters fed back
    calls.clear()
    "".join(generate(model, vocab, "the ship ", 20, generator=torch.Generator()))
    assert len(calls) == 20 and not any(enabled for enabled, _ in calls)


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.5), (5, 0.8)])
def test_top_k_and_top_p_only_emit_allowed_characters(top_k, top_p):
    model, vocab = sampler_model()
    prompt = "the "
    generator = torch.Generator().manual_seed(0)
    text = "".join(
        generate(
            model, vocab, prompt, 80, temperature=2.0, top_k=top_k, top_p=top_p, generator=generator
        )
    )
    # Teacher-force prompt + text: the logits before each emitted character, all at once.
    logits, _, _ = model(encode(prompt + text, vocab)[None])
    before = logits[0, len(prompt) - 1 : -1]  # (80, V)
    allowed = torch.isfinite(filter_logits(before, 2.0, top_k, top_p))  # (80, V)
    emitted = encode(text, vocab)
    assert allowed[torch.arange(80), emitted].all()
    assert (allowed.sum(-1) < len(vocab)).all()  # the filter did restrict every step
    # Unfiltered sampling at this temperature does leave such sets: the check is not vacuous.
    free = "".join(
        generate(
            model, vocab, prompt, 80, temperature=2.0, generator=torch.Generator().manual_seed(0)
        )
    )
    free_logits, _, _ = model(encode(prompt + free, vocab)[None])
    free_allowed = torch.isfinite(
        filter_logits(free_logits[0, len(prompt) - 1 : -1], 2.0, top_k, top_p)
    )
    assert not free_allowed[torch.arange(80), encode(free, vocab)].all()


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, None), (1.7, None, None), (0.8, 4, None), (1.0, None, 0.6)],
)
def test_generation_equals_rereading_the_whole_text_at_every_character(temperature, top_k, top_p):
    """A plain reference: at each character the model reads prompt + text so far from scratch (no
    state carried) and the next one is drawn from softmax(filter_logits(last logits)) with the
    same generator. A model left in training mode (dropout 0.5) is switched to eval."""
    vocab = build_vocab(SHIP)
    model = random_model(ModelConfig(hidden_size=32, embed_size=16, dropout=0.5), len(vocab))
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    model.train()
    text = "".join(
        generate(model, vocab, "the s", 40, generator=torch.Generator().manual_seed(3), **settings)
    )
    assert not model.training
    generator, expected = torch.Generator().manual_seed(3), ""
    with torch.no_grad():
        for _ in range(40):
            logits = model(encode("the s" + expected, vocab)[None])[0][0, -1:]  # (1, V)
            probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
            expected += vocab[torch.multinomial(probs, 1, generator=generator).item()]
    assert text == expected


def test_generation_refuses_bad_settings_at_the_call_and_starts_an_empty_prompt_on_a_newline():
    """temperature > 0 unless greedy (NaN too), top-k >= 0 (0: off), top-p in (0, 1] (1: off);
    an empty prompt is conditioned on a newline, as if it had been given."""
    model, vocab = sampler_model()
    for bad, message in (
        (dict(temperature=0.0), "temperature must be > 0, got 0.0"),
        (dict(temperature=-1.0), "temperature must be > 0"),
        (dict(temperature=math.nan), "temperature must be > 0"),
        (dict(top_k=-1), r"top-k must be >= 0 \(0: off\), got -1"),
        (dict(top_p=0.0), r"top-p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top-p must be in \(0, 1\]"),
    ):
        with pytest.raises(UserError, match=message):
            generate(model, vocab, "the ", 5, **bad)
    greedy = "".join(generate(model, vocab, "the ", 12, greedy=True))
    assert "".join(generate(model, vocab, "the ", 12, greedy=True, temperature=0.0)) == greedy
    for off in (dict(top_k=0), dict(top_p=1.0)):
        same = generate(model, vocab, "the ", 30, generator=torch.Generator().manual_seed(1), **off)
        free = generate(model, vocab, "the ", 30, generator=torch.Generator().manual_seed(1))
        assert "".join(same) == "".join(free)
    newline_vocab = sorted({*vocab, "\n", " "})
    newline_model = random_model(ModelConfig(hidden_size=8, embed_size=4), len(newline_vocab))
    empty = "".join(generate(newline_model, newline_vocab, "", 20, greedy=True))
    assert empty == "".join(generate(newline_model, newline_vocab, "\n", 20, greedy=True))


@pytest.mark.parametrize("vocab", [[], ["a", "b", "a"], ["a", "bc"], ["a", ""]])
def test_a_checkpoint_whose_vocabulary_is_not_distinct_characters_is_refused(tmp_path, vocab):
    cfg = config("tiny")
    model = CharLM(cfg.model, max(len(vocab), 1))
    path = tmp_path / "m.pt"
    payload = {"task": "char_lm", "config": to_dict(cfg), "vocab": vocab}
    save_checkpoint({**payload, "model": model.state_dict()}, path)
    with pytest.raises(UserError, match="its vocabulary must be distinct single characters"):
        load_char_lm(path)


def test_a_checkpoint_whose_weights_do_not_fit_its_vocabulary_names_the_tensor(tmp_path):
    """Weights of a 3-character model under a 2-character vocabulary: one UserError naming the
    first tensor that differs, not torch's size-mismatch traceback."""
    cfg = config("tiny")
    path = tmp_path / "m.pt"
    weights = CharLM(cfg.model, 3).state_dict()
    save_checkpoint(
        {"task": "char_lm", "config": to_dict(cfg), "vocab": ["a", "b"], "model": weights}, path
    )
    with pytest.raises(UserError, match=r"m.pt's weights do not fit its config: '.*' is \("):
        load_char_lm(path)


def test_greedy_and_top_k_one_agree_and_prompts_are_checked():
    model, vocab = sampler_model()
    greedy_text = "".join(generate(model, vocab, "ship", 30, greedy=True))
    top1 = "".join(generate(model, vocab, "ship", 30, top_k=1, generator=torch.Generator()))
    assert greedy_text == top1
    with pytest.raises(UserError, match=r"prompt has 2 character\(s\).*'Q' \(U\+0051\), 'X'"):
        generate(model, vocab, "QX ship", 5)  # raised at the call, before any character
    with pytest.raises(UserError, match="has none; pass a prompt"):
        generate(model, vocab, "", 5)  # the ship sentence has no newline
    newline_vocab = sorted(vocab + ["\n"])
    newline_model = random_model(ModelConfig(hidden_size=8, embed_size=4), len(newline_vocab))
    assert len("".join(generate(newline_model, newline_vocab, "", 7, greedy=True))) == 7
