"""train.precision: the choice of precision, bf16 training on the CPU, checkpoints across precisions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from char_lm.config import CharLMConfig
from char_lm.generate import load_char_lm, trained_precision
from char_lm.train import train
from recurrent import precision
from recurrent.config import load_config
from recurrent.core import RecurrentCore
from recurrent.errors import UserError
from recurrent.precision import Precision

TINY = Path(__file__).resolve().parents[1] / "configs" / "char_lm" / "tiny.yaml"
CPU = torch.device("cpu")


def test_resolution_rules(monkeypatch):
    assert precision.resolve("fp32", CPU) == "fp32"
    assert precision.resolve("bf16", CPU) == "bf16"
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        precision.resolve("fp16", CPU)
    monkeypatch.setattr(precision, "AUTO_BF16_ON_CPU", True)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("auto", CPU) == "fp32"  # no native bf16: fp32
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve("auto", CPU) == "bf16"
    # A checkpoint trained in fp16 on a GPU is served on a CPU in what the CPU can do.
    assert Precision.for_inference("fp16", CPU).name == "bf16"
    assert Precision.for_inference("bf16", CPU).name == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert Precision.for_inference("fp16", CPU).name == "fp32"
    assert Precision.for_inference("bf16", CPU).name == "fp32"  # not emulated where not native
    scaler = Precision.choose("bf16", CPU).grad_scaler()
    assert not scaler.is_enabled()  # only fp16 scales gradients
    # each precision's autocast computes products in its dtype (fp16's is the GPU's; its context
    # is the same on the CPU)
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with Precision(name, CPU).autocast():
            assert layer(x).dtype == dtype, name


@pytest.mark.parametrize("supported", [True, False])
def test_resolution_on_a_gpu_follows_its_native_bf16_support(monkeypatch, supported):
    """On CUDA (its bf16 support stood in for; emulated bf16, which pre-Ampere GPUs report, is
    never asked for): auto is bf16 where native, else fp32; bf16 is refused where not native,
    and a checkpoint trained in bf16 is then served in fp32; fp16 needs no check. An unknown
    name is refused on any device."""
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    cuda = torch.device("cuda")
    assert precision.resolve("auto", cuda) == ("bf16" if supported else "fp32")
    assert precision.resolve("fp16", cuda) == "fp16"
    assert precision.resolve("fp32", cuda) == "fp32"
    if supported:
        assert precision.resolve("bf16", cuda) == "bf16"
    else:
        with pytest.raises(UserError, match="this GPU does not support bf16"):
            precision.resolve("bf16", cuda)
    assert Precision.for_inference("bf16", cuda).name == ("bf16" if supported else "fp32")
    assert asked and not any(asked)
    for device in (CPU, cuda):
        with pytest.raises(UserError, match="unknown precision 'fp64'"):
            precision.resolve("fp64", device)


def test_a_resumed_fp16_run_gets_its_gradient_scalers_state_back():
    """The scaler state a checkpoint saved (its scale, grown or backed off) is loaded into fp16's
    scaler; a precision without a scaler ignores one."""
    saved = torch.amp.GradScaler("cpu", init_scale=2.0**7, growth_interval=9).state_dict()
    scaler = Precision("fp16", CPU, scaler_state=saved).grad_scaler()
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**7
    assert scaler.state_dict()["growth_interval"] == 9
    assert Precision("fp16", CPU).grad_scaler().get_scale() == 2.0**16  # torch's default
    assert not Precision("bf16", CPU, scaler_state=saved).grad_scaler().is_enabled()


def test_what_a_checkpoint_records_of_its_precision():
    """Its card's resolved precision first, else its config's train.precision where that names
    one; auto, a missing or a non-string value is no record (served in fp32)."""
    from recurrent.precision import recorded_precision, trained_in

    def payload(card, setting):
        return {"card": {"precision": card}, "config": {"train": {"precision": setting}}}

    assert recorded_precision(payload("bf16", "auto")) == "bf16"
    assert recorded_precision(payload("fp16", "fp32")) == "fp16"
    assert recorded_precision(payload(None, "bf16")) == "bf16"
    assert recorded_precision(payload("auto", "fp16")) == "fp16"
    assert recorded_precision(payload(None, "auto")) is None
    assert recorded_precision(payload(None, "fp64")) is None
    assert recorded_precision({"card": "bf16", "config": "fp16"}) is None
    assert recorded_precision({}) is None
    assert trained_in(payload(None, "auto")) == trained_in({}) == "fp32"
    assert trained_in(payload(None, "bf16")) == "bf16"


@pytest.mark.parametrize(
    "flags, native",
    [
        ("fpu avx2 avx512f", False),
        ("fpu avx512f avx512_bf16", True),
        ("fpu amx_bf16 amx_tile", True),
    ],
)  # this machine's AMD EPYC has avx512_bf16 but no AMX; Intel's Sapphire Rapids has both
def test_native_bf16_is_either_cpu_flag(tmp_path, monkeypatch, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    monkeypatch.setattr(
        precision, "Path", lambda name: cpuinfo if name == "/proc/cpuinfo" else None
    )
    precision.cpu_has_native_bf16.cache_clear()
    try:
        assert precision.cpu_has_native_bf16() is native
    finally:
        precision.cpu_has_native_bf16.cache_clear()


def test_a_machine_without_proc_cpuinfo_has_no_native_bf16(tmp_path, monkeypatch):
    """macOS and Windows have no /proc/cpuinfo: auto is then fp32 there, not an error."""
    monkeypatch.setattr(precision, "Path", lambda name: tmp_path / "no such file")
    precision.cpu_has_native_bf16.cache_clear()
    try:
        assert precision.cpu_has_native_bf16() is False
        assert precision.resolve("auto", CPU) == "fp32"
    finally:
        precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_core_runs_its_cell_in_bf16_under_cpu_autocast(cell, padded):
    """Under CPU bf16 autocast the fused core is torch.nn's module run on bf16 copies of its
    float32 weights: the same outputs, and the same gradients landing on the float32 weights; and
    it stays within bf16 rounding of float32."""
    torch.manual_seed(0)
    core = RecurrentCore(cell, 8, 16, num_layers=2)
    x = torch.randn(3, 5, 8)
    lengths = torch.tensor([5, 2, 4]) if padded else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, state = core(x, lengths=lengths)
    assert outputs.dtype == torch.bfloat16 and state.dtype == torch.float32
    (outputs.float().square().sum() + state.sum()).backward()

    reference = RecurrentCore(cell, 8, 16, num_layers=2)
    reference.load_state_dict(core.state_dict())
    reference.to(torch.bfloat16)
    ref_outputs, ref_state = reference(x.bfloat16(), lengths=lengths)
    torch.testing.assert_close(outputs, ref_outputs, rtol=0, atol=0)
    torch.testing.assert_close(state, ref_state.float(), rtol=0, atol=0)
    (ref_outputs.float().square().sum() + ref_state.float().sum()).backward()
    for (name, weight), ref_weight in zip(
        core.named_parameters(), reference.parameters(), strict=True
    ):
        assert weight.dtype == torch.float32, name
        torch.testing.assert_close(weight.grad, ref_weight.grad.float(), rtol=0, atol=0)

    fp32_outputs, fp32_state = core(x, lengths=lengths)  # bf16 keeps about 3 significant digits
    torch.testing.assert_close(outputs.float(), fp32_outputs, rtol=0.05, atol=0.02)
    torch.testing.assert_close(state, fp32_state, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_both_backends_give_the_state_back_in_its_dtype_under_cpu_autocast(cell):
    """A character model carries its state from window to window (and into last.pt): under bf16
    autocast each backend gives it back as it came, float32, within bf16 rounding of each other
    (the explicit RNN's h came back in bf16)."""
    torch.manual_seed(0)
    fused = RecurrentCore(cell, 8, 16, num_layers=2)
    explicit = RecurrentCore(cell, 8, 16, num_layers=2, backend="explicit")
    explicit.load_state_dict(fused.state_dict())
    x, start = torch.randn(3, 5, 8), torch.randn(fused.state_parts, 2, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        states = [core(x, start)[1] for core in (fused, explicit)]
    assert [state.dtype for state in states] == [torch.float32, torch.float32]
    torch.testing.assert_close(states[1], states[0], rtol=0.05, atol=0.02)


def test_bf16_training_on_the_cpu_and_its_checkpoint_in_fp32(tmp_path):
    overrides = ["train.max_steps=4", "train.eval_every=2", "train.precision=bf16"]
    summary = train(load_config(CharLMConfig, TINY, overrides), tmp_path / "bf16", quiet=True)
    assert summary["precision"] == "bf16" and summary["steps"] == 4
    model, _, cfg = load_char_lm(tmp_path / "bf16" / "last.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    # The same run resumes in fp32 (checkpoints are interchangeable across precisions).
    more = [*overrides[:2], "train.max_steps=6", "train.precision=fp32"]
    resumed = train(
        load_config(CharLMConfig, TINY, more), tmp_path / "bf16", resume=True, quiet=True
    )
    assert resumed["steps"] == 6 and resumed["precision"] == "fp32"


def test_a_checkpoint_is_served_and_resumed_in_what_auto_chose_where_it_trained(
    tmp_path, monkeypatch, capsys
):
    """A run records what train.precision resolved to (its card's "precision"): "auto" trained
    in fp32 on a CPU without native bf16 (or, until 2026-12-05, on any CPU) is served in fp32
    where auto is bf16, and a resume there says it goes on in bf16. A checkpoint that records
    nothing is served in its setting, or fp32 for auto (or no setting, before 2026-11-22)."""
    from captioner.inference import captioner_from_payload
    from recurrent.checkpoint import load_checkpoint, save_checkpoint

    overrides = ["train.max_steps=2", "train.eval_every=2", "train.precision=auto"]
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    train(load_config(CharLMConfig, TINY, overrides), tmp_path / "run", quiet=True)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["card"]["precision"] == "fp32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)

    def served(**edits) -> str:
        payload = load_checkpoint(tmp_path / "run" / "last.pt")
        for key, value in edits.items():
            section = payload["card"] if key == "card" else payload["config"]["train"]
            section.pop("precision") if value is None else section.update(precision=value)
        save_checkpoint(payload, tmp_path / "edited.pt")
        model, _, config = load_char_lm(tmp_path / "edited.pt")
        return trained_precision(model, config).name

    assert served() == "fp32"
    assert served(card="bf16") == "bf16"
    assert served(card=None) == "fp32"  # auto, not recorded
    assert served(card=None, precision=None) == "fp32"  # no setting at all
    assert served(card=None, precision="bf16") == "bf16"
    bundled = load_checkpoint(Path(TINY).parents[2] / "models" / "scenes_captioner.pt")
    assert captioner_from_payload(bundled).precision().name == "bf16"  # trained so, recorded
    del bundled["card"]["precision"]
    assert captioner_from_payload(bundled).precision().name == "fp32"

    capsys.readouterr()
    more = [*overrides[1:], "train.max_steps=4"]
    resumed = train(load_config(CharLMConfig, TINY, more), tmp_path / "run", resume=True)
    assert resumed["precision"] == "bf16"
    assert (
        "note: the run was training in fp32 at step 2; it goes on in bf16 (train.precision auto "
        "on cpu); pass --set train.precision=fp32 to keep it\n"
    ) in capsys.readouterr().out
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["card"]["precision"] == "bf16"
    del payload["card"]["precision"]  # as an older version wrote it
    save_checkpoint(payload, tmp_path / "run" / "last.pt")
    train(load_config(CharLMConfig, TINY, [*more, "train.max_steps=6"]), tmp_path / "run", True)
    assert (
        f"note: {tmp_path / 'run' / 'last.pt'} does not record the precision its run trained in"
    ) in capsys.readouterr().out


def _edit_card(path: Path, **card) -> None:
    from recurrent.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(path)
    for key, value in card.items():
        payload["card"].pop(key) if value is None else payload["card"].update({key: value})
    save_checkpoint(payload, path)


def _char(*overrides: str) -> CharLMConfig:
    return load_config(CharLMConfig, TINY, ["train.eval_every=2", *overrides])


def test_the_precision_notes_of_a_resume_say_what_the_checkpoint_records(
    tmp_path, monkeypatch, capsys
):
    """An older checkpoint whose config names its precision records it (no "does not record"
    note); a run that was training in fp16 on a GPU, resumed on the CPU, is not told to keep
    fp16, which the CPU refuses; a card's precision of another kind (a checkpoint is user input)
    is no record, not a TypeError."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    run = tmp_path / "run"
    train(_char("train.max_steps=2", "train.precision=bf16"), run, quiet=True)
    _edit_card(run / "last.pt", precision=None)  # as an older version wrote it
    capsys.readouterr()
    train(_char("train.max_steps=4", "train.precision=bf16"), run, resume=True, quiet=True)
    assert "does not record" not in capsys.readouterr().out
    _edit_card(run / "last.pt", precision="fp16")
    train(_char("train.max_steps=6", "train.precision=fp32"), run, resume=True, quiet=True)
    assert (
        "note: the run was training in fp16 at step 4; it goes on in fp32 (train.precision fp32 "
        "on cpu)\n"
    ) in capsys.readouterr().out
    from recurrent.precision import recorded_precision

    assert recorded_precision({"card": {}, "config": {"train": {"precision": ["bf16"]}}}) is None
    payload = {"card": {}, "config": {"train": {"precision": "auto"}}}  # older, auto: unknown
    assert recorded_precision(payload) is None
    for hostile in (["bf16"], {"bf16": 1}):
        _edit_card(run / "last.pt", precision=hostile)  # the config's fp32 is the record
        train(_char("train.max_steps=8", "train.precision=fp32"), run, resume=True, quiet=True)
        said = capsys.readouterr().out
        assert "was training in" not in said and "does not record" not in said
        model, _, config = load_char_lm(run / "last.pt")
        assert trained_precision(model, config).name == "fp32"


def test_bf16_copies_kept_for_decoding_follow_changes_to_the_weights():
    """Without gradients the core keeps its bf16 weight copies between calls (decoding runs the
    cell once per token); a weight changed in place or replaced makes fresh ones."""
    torch.manual_seed(0)
    core = RecurrentCore("lstm", 4, 8)
    x = torch.randn(2, 3, 4)

    def run() -> Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return core(x)[0]

    def fresh() -> Tensor:
        reference = RecurrentCore("lstm", 4, 8)
        reference.load_state_dict(core.state_dict())
        with torch.no_grad():
            return reference.to(torch.bfloat16)(x.bfloat16())[0]

    before = run()
    assert torch.equal(before, fresh()) and torch.equal(run(), before)
    with torch.no_grad():
        core.rnn.weight_hh_l0.mul_(2)  # what an optimizer step does
    assert torch.equal(run(), fresh()) and not torch.equal(run(), before)
    core.load_state_dict({k: v * 0.5 for k, v in core.state_dict().items()})
    assert torch.equal(run(), fresh())


def test_captions_are_decoded_in_the_precision_the_captioner_serves_in(monkeypatch):
    """The bundled captioner was trained in bf16: where bf16 is native, the encoder and the beam
    search both run under its autocast (the beam search ran in float32 before)."""
    from captioner.decode import beam_search
    from captioner.inference import caption_images, encode_images, load_captioner

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    captioner = load_captioner(str(Path(TINY).parents[2] / "models" / "scenes_captioner.pt"))
    assert captioner.precision().name == "bf16"
    decoder, seen = captioner.model.decoder, []
    step = decoder.step

    def watched(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return step(*args, **kwargs)

    images = list(torch.randint(0, 256, (6, 3, 96, 96), generator=torch.Generator().manual_seed(0),
                                dtype=torch.uint8))  # fmt: skip
    monkeypatch.setattr(decoder, "step", watched)
    results = caption_images(captioner, images, beam_size=3)
    assert seen and all(seen)
    monkeypatch.setattr(decoder, "step", step)
    features = encode_images(captioner, images)
    vocab = captioner.vocab
    with torch.no_grad(), captioner.autocast():
        expected = beam_search(decoder, features, beam_size=3, max_length=captioner.cfg.decode.max_length,
                               start_id=vocab.start_id, end_id=vocab.end_id,
                               length_penalty=captioner.cfg.decode.length_penalty)  # fmt: skip
    assert [r.beams[0][1] for r in results] == [beams[0].logprob for beams in expected]
