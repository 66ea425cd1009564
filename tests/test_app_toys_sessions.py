"""The lecture toys while other sessions use the app: each session's script runs in its own thread
of the server, and torch's global random generator is the process's. A toy is seeded by its config
(`crnn_app.toys.seeded_model`), so the same settings train the same toy whatever the other
sessions do meanwhile."""

from __future__ import annotations

import threading

import pytest
import torch

from char_lm.config import ModelConfig
from char_lm.model import CharLM
from crnn_app import toys


@pytest.mark.parametrize(
    ("cell", "input_kind", "layers"),
    [("lstm", "onehot", 2), ("gru", "embedding", 1), ("rnn", "onehot", 1)],
)
def test_a_toys_model_is_what_seeding_the_global_generator_gives(
    cell: str, input_kind: str, layers: int
) -> None:
    """`toys.seeded_model` draws from a generator of its own the weights ``char_lm.train`` gets
    from ``torch.manual_seed`` and the constructor, and leaves the global generator alone."""
    config = ModelConfig(
        input=input_kind, cell=cell, num_layers=layers, hidden_size=12, embed_size=5
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        expected = CharLM(config, 9).state_dict()
    state = torch.get_rng_state()
    got = toys.seeded_model(config, 9, 7).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_a_layer_seeded_model_has_no_rule_for_is_refused(monkeypatch) -> None:
    """A layer added to the model that `seeded_model` does not initialise would keep the
    uninitialised memory of `to_empty`: refused, naming it."""

    class NormedCharLM(CharLM):
        def __init__(self, config: ModelConfig, vocab_size: int) -> None:
            super().__init__(config, vocab_size)
            self.norm = torch.nn.LayerNorm(config.hidden_size)

    monkeypatch.setattr(toys, "CharLM", NormedCharLM)
    with pytest.raises(TypeError, match="cannot initialise a LayerNorm"):
        toys.seeded_model(ModelConfig(hidden_size=4), 5, 0)


def test_a_toy_trained_while_another_session_loads_a_model_is_the_toy_trained_alone() -> None:
    """Each session runs in its own thread of the server, and torch's global generator is the
    process's. A toy seeded it and drew its weights from it: when another session drew from it
    meanwhile (loading a model builds one, whose constructor draws its weights), the toy came
    out another, its losses and its steps through the text not the same settings' alone. Here
    the other session draws right as the toy's model is being built (at its first parameter)."""
    cfg = toys.toy_config("hihello.yaml", "gru", 30)
    alone = toys.train_toy(cfg, "hihello")
    toy_thread: list[threading.Thread] = []
    asked, drew = threading.Event(), threading.Event()

    def other_session() -> None:  # load_char_lm builds a CharLM before reading its weights
        assert asked.wait(10)
        CharLM(cfg.model, 40)
        drew.set()

    def at_a_parameter(module, name, parameter) -> None:
        if threading.current_thread() is toy_thread[0] and not asked.is_set():
            asked.set()
            assert drew.wait(10)

    trained = {}
    toy_thread.append(
        threading.Thread(target=lambda: trained.update(run=toys.train_toy(cfg, "hihello")))
    )
    other = threading.Thread(target=other_session)
    hook = torch.nn.modules.module.register_module_parameter_registration_hook(at_a_parameter)
    try:
        other.start()
        toy_thread[0].start()
        toy_thread[0].join()
        other.join()
    finally:
        hook.remove()
    assert drew.is_set()
    run = trained["run"]
    assert run.losses == alone.losses
    for name, value in alone.model.state_dict().items():
        assert torch.equal(run.model.state_dict()[name], value), name
