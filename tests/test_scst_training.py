"""Self-critical training in captioner.train (``train.objective: scst``) and ``--init-from``, on
tiny models and a few scenes: the phases, the reward logged, resume, and the start from another
run's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import captioner.scst as scst
import captioner.train as captioner_train
from captioner.config import CaptionerConfig
from captioner.train import main as train_main
from captioner.train import train
from recurrent.checkpoint import load_checkpoint
from recurrent.config import load_config
from recurrent.errors import UserError, run_cli

TINY = Path(__file__).resolve().parents[1] / "configs" / "captioner" / "tiny.yaml"
SCST = ("train.objective=scst", "train.captions_per_image=2", "train.scst_samples=3")


def tiny_cfg(annotations: Path, *overrides: str) -> CaptionerConfig:
    return load_config(CaptionerConfig, TINY, [f"data.annotations={annotations}", *overrides])


def train_lines(out_dir: Path) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["kind"] == "train"]


@pytest.fixture(scope="module")
def xe_checkpoint(scenes_annotations: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("xe")
    cfg = tiny_cfg(scenes_annotations, "train.max_steps=4", "train.captions_per_image=2")
    train(cfg, out, quiet=True)
    return out / "last.pt"


def test_a_cross_entropy_phase_then_self_critical_steps(
    scenes_annotations: Path, tmp_path: Path, monkeypatch
):
    """train.scst_from_step=2: steps 1-2 are the cross-entropy run's own steps, bit for bit;
    steps 3-4 are self-critical and log the reward, its baseline and the share of repeats. Both
    count (image, caption) pairs for the throughput: the references, then the samples (the
    self-critical steps counted images, a quarter of the rate under the same "pairs/s")."""
    counted = []
    real = captioner_train.StepResult
    monkeypatch.setattr(
        captioner_train, "StepResult", lambda *args: counted.append(args[1]) or real(*args)
    )
    common = ("train.max_steps=4", "train.captions_per_image=2")
    xe = train(tiny_cfg(scenes_annotations, *common), tmp_path / "xe", quiet=True)
    scst_cfg = tiny_cfg(scenes_annotations, *common, *SCST, "train.scst_from_step=2")
    scst = train(scst_cfg, tmp_path / "scst", quiet=True)
    images = scst_cfg.train.batch_size
    assert counted == [images * 2] * 4 + [images * 2] * 2 + [images * 3] * 2  # 2 refs, 3 samples
    assert scst["losses"][:2] == xe["losses"][:2]
    assert scst["losses"][2:] != xe["losses"][2:]
    lines = train_lines(tmp_path / "scst")
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert not any("scst_reward" in line for line in lines[:2])
    for line in lines[2:]:
        assert 0.0 <= line["scst_reward"] <= 10.0 and 0.0 <= line["scst_repeat_share"] <= 1.0
        assert "scst_greedy_reward" in line and line["scst_baseline"] == line["scst_greedy_reward"]


def test_self_critical_from_a_checkpoint_starts_from_its_weights(
    scenes_annotations: Path, tmp_path: Path, xe_checkpoint: Path
):
    """--init-from loads the weights only: one step at a learning rate of 1e-9 leaves them where
    the cross-entropy run left them, while a run without it starts from fresh random weights."""
    saved = load_checkpoint(xe_checkpoint, task="captioner")["model"]
    cfg = tiny_cfg(
        scenes_annotations, *SCST, "train.max_steps=1", "train.lr=1e-9", "train.encoder_lr=0"
    )
    summary = train(cfg, tmp_path / "from", quiet=True, init_from=xe_checkpoint)
    assert summary["steps"] == 1  # a new run: the step count starts at 0, not at the XE run's 4
    started = load_checkpoint(tmp_path / "from" / "last.pt", task="captioner")["model"]
    for name, tensor in saved.items():
        if "running_" in name or "num_batches" in name:  # batch norm's statistics move in a step
            continue
        torch.testing.assert_close(started[name], tensor, atol=1e-6, rtol=0, msg=name)
    fresh = load_checkpoint(
        train(cfg, tmp_path / "fresh", quiet=True)["last_checkpoint"], task="captioner"
    )["model"]
    assert any(not torch.allclose(fresh[name], saved[name]) for name in saved)


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_self_critical_resume_continues_exactly(
    scenes_annotations: Path, tmp_path: Path, xe_checkpoint: Path, baseline: str
):
    """The samples come from the global generator, whose state the checkpoint keeps: 2 steps,
    then 2 more after --resume, give the 4 losses of one uninterrupted run."""
    overrides = (*SCST, f"train.scst_baseline={baseline}", "train.eval_every=2")
    straight = train(
        tiny_cfg(scenes_annotations, *overrides, "train.max_steps=4"),
        tmp_path / "straight",
        quiet=True,
        init_from=xe_checkpoint,
    )
    out = tmp_path / "resumed"
    first = train(
        tiny_cfg(scenes_annotations, *overrides, "train.max_steps=2"),
        out,
        quiet=True,
        init_from=xe_checkpoint,
    )
    second = train(
        tiny_cfg(scenes_annotations, *overrides, "train.max_steps=4"),
        out,
        resume=True,
        quiet=True,
        init_from=xe_checkpoint,  # not read: the run's own last.pt wins
    )
    assert first["losses"] + second["losses"] == straight["losses"]


def test_self_critical_needs_images_not_pairs(scenes_annotations: Path, tmp_path: Path):
    cfg = tiny_cfg(scenes_annotations, "train.objective=scst", "train.captions_per_image=0")
    with pytest.raises(UserError, match="train.captions_per_image"):
        train(cfg, tmp_path / "run", quiet=True)


def test_init_from_refuses_another_network_or_task(
    scenes_annotations: Path, tmp_path: Path, xe_checkpoint: Path, capsys
):
    """One line naming the file and the field, exit status 2, and no checkpoint left behind."""
    base = ["--config", str(TINY), "--set", f"data.annotations={scenes_annotations}", "--quiet"]
    cases = {
        "hidden": (["--set", "model.hidden_size=48"], "model.hidden_size is 32 in the checkpoint"),
        "words": (["--set", "data.min_word_count=30"], "another vocabulary"),
    }
    for name, (extra, message) in cases.items():
        out = tmp_path / name
        argv = [*base, *extra, "--out-dir", str(out), "--init-from", str(xe_checkpoint)]
        assert run_cli(train_main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and str(xe_checkpoint) in err, err
        assert not (out / "last.pt").exists()
    other_task = [*base, "--out-dir", str(tmp_path / "x"), "--init-from", str(_char_lm(tmp_path))]
    assert run_cli(train_main, other_task) == 2
    assert "char_lm" in capsys.readouterr().err


def _char_lm(tmp_path: Path) -> Path:
    from char_lm.config import CharLMConfig
    from char_lm.train import train as train_char_lm

    text = tmp_path / "text.txt"
    text.write_text("hello world. " * 200)
    cfg = load_config(
        CharLMConfig,
        Path(__file__).resolve().parents[1] / "configs" / "char_lm" / "tiny.yaml",
        [f"data.path={text}", "train.max_steps=1"],
    )
    return Path(train_char_lm(cfg, tmp_path / "lm", quiet=True)["last_checkpoint"])


def test_suppress_unk_holds_in_the_samples_and_the_greedy_baseline(
    scenes_annotations: Path, tmp_path: Path, xe_checkpoint: Path, record_calls
):
    """decode.suppress_unk: validation never emits <unk>, so neither may the captions the policy
    gradient is taken on, nor the greedy baseline they are compared with (both could: the policy
    learnt from captions the run is never scored on)."""
    samples = record_calls(scst, "sample_captions")
    greedy = record_calls(scst, "greedy_decode")
    cfg = tiny_cfg(scenes_annotations, *SCST, "train.max_steps=2", "decode.suppress_unk=true")
    train(cfg, tmp_path / "run", quiet=True, init_from=xe_checkpoint)
    unk = load_checkpoint(tmp_path / "run" / "last.pt")["vocab"].index("<unk>")
    assert len(samples) == len(greedy) == 2
    for call in samples:
        assert list(call.kwargs["suppress_ids"]) == [unk] and not (call.result.tokens == unk).any()
    assert [list(call.kwargs["suppress_ids"]) for call in greedy] == [[unk], [unk]]
