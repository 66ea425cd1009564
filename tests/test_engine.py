"""recurrent.engine's rules, checked on both tasks' real trainers (in-process, CPU, seconds).

- The learning rate: warmup then a cosine over steps, or over the time budget, whichever runs out
  first (properties of `lr_factor`); both trainers set exactly that schedule on their optimizers
  (read back from metrics.jsonl, one line per step); ``lr_decay_steps`` ends the cosine early; a
  resume takes the learning rate from the config, and a resume with a larger ``max_steps`` re-spans
  the cosine, as the engine's docstring says.
- One weight-decay rule (`parameter_groups`) for both tasks' models and their optimizers.
- last.pt is written every ``checkpoint_every`` steps and every ``checkpoint_every_s`` seconds.
- A non-finite loss stops the run with one line naming the step and the last good checkpoint,
  which is left byte for byte as it was; so do NaN gradients behind a finite loss, before their
  update reaches a checkpoint.
- The logged gradient norm is the pre-clipping norm `torch.nn.utils.clip_grad_norm_` returns.
- The progress bar ends as one line in a terminal (issue 13 item 4), through a real process on a
  pseudo-terminal.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import math
import os
import shutil
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import captioner.train as captioner_train
import char_lm.train as char_lm_train
from captioner.config import CaptionerConfig
from captioner.model import CaptionModel
from char_lm.config import CharLMConfig
from char_lm.data import load_corpus
from char_lm.model import CharLM
from recurrent import engine
from recurrent.checkpoint import load_checkpoint, save_checkpoint
from recurrent.config import load_config
from recurrent.engine import (
    NO_DECAY_MODULES,
    MetricsLog,
    Run,
    RunSettings,
    StepResult,
    build_optimizer,
    lr_factor,
    parameter_groups,
    read_metrics,
)
from recurrent.errors import RunStopped, UserError, run_cli
from recurrent.precision import Precision

REPO = Path(__file__).resolve().parents[1]
CHAR_TINY = REPO / "configs" / "char_lm" / "tiny.yaml"
CAPTION_TINY = REPO / "configs" / "captioner" / "tiny.yaml"
# The train.* settings both tasks get in the shared-rule tests.
SCHEDULE = ["train.warmup_steps=3", "train.lr=0.004", "train.min_lr_ratio=0.2", "train.log_every=1"]


def char_cfg(*overrides: str) -> CharLMConfig:
    return load_config(CharLMConfig, CHAR_TINY, list(overrides))


def caption_cfg(annotations: Path, *overrides: str) -> CaptionerConfig:
    base = [f"data.annotations={annotations}", "train.eval_max_images=2"]
    return load_config(CaptionerConfig, CAPTION_TINY, base + list(overrides))


def train_task(task: str, annotations: Path, out_dir: Path, *overrides: str, resume=False) -> dict:
    if task == "char_lm":
        return char_lm_train.train(char_cfg(*overrides), out_dir, resume, quiet=True)
    cfg = caption_cfg(annotations, *overrides)
    return captioner_train.train(cfg, out_dir, resume, quiet=True)


def train_lines(out_dir: Path) -> list[dict]:
    return [r for r in read_metrics(out_dir / "metrics.jsonl") if r["kind"] == "train"]


def assert_lr_rule(lines: list[dict], base: float, rule: RunSettings, total: int) -> None:
    """Each logged lr (log_every=1) is ``base * lr_factor`` of its step, at an elapsed time between
    the previous line's and its own (the engine reads the clock just before the step)."""
    previous_time = 0.0
    for line in lines:
        index = line["step"] - 1  # lr_factor counts steps from 0; metrics lines from 1
        high = base * lr_factor(index, max(0.0, previous_time - 5e-4), rule, total)
        low = base * lr_factor(index, line["time_s"] + 5e-4, rule, total)  # time_s is rounded
        assert low <= line["lr"] <= high, (line, low, high)
        previous_time = line["time_s"]


def cosine(fraction: float, min_ratio: float) -> float:
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * fraction))


# --- the learning-rate rule ---------------------------------------------------------------------

schedules = st.builds(
    RunSettings,
    warmup_steps=st.integers(0, 50),
    min_lr_ratio=st.floats(0.0, 1.0),
    lr_decay_steps=st.sampled_from([0, 0, 30, 200]),
    time_budget_s=st.sampled_from([0.0, 0.0, 10.0, 3600.0]),
)


@settings(max_examples=300, deadline=None)
@given(
    rule=schedules,
    total=st.integers(0, 400),
    step=st.integers(0, 450),
    elapsed=st.floats(0, 7200),
)
def test_lr_factor_is_warmup_then_a_cosine_over_steps_or_time_whichever_runs_out_first(
    rule: RunSettings, total: int, step: int, elapsed: float
):
    span = rule.lr_decay_steps or total  # warmup + cosine, in steps
    factor = lr_factor(step, elapsed, rule, total)
    if step < rule.warmup_steps:  # linear warmup, whatever the clock says
        assert factor == pytest.approx((step + 1) / rule.warmup_steps)
        return
    assert rule.min_lr_ratio - 1e-12 <= factor <= 1 + 1e-12
    # The step cosine alone (elapsed 0) and the time cosine alone (no step span: total 0 and
    # lr_decay_steps cleared); the rule takes whichever is further along: the smaller factor.
    by_steps = lr_factor(step, 0.0, rule, total)
    by_time = lr_factor(step, elapsed, dataclasses.replace(rule, lr_decay_steps=0), 0)
    assert factor == min(by_steps, by_time)
    if not rule.time_budget_s:
        assert by_time == 1.0 and factor == by_steps
    else:
        expected = cosine(min(1.0, elapsed / rule.time_budget_s), rule.min_lr_ratio)
        assert by_time == pytest.approx(expected, abs=1e-5)
    if not span:
        assert by_steps == 1.0  # no step limit: only the clock (if any) anneals
    elif step >= span:  # the cosine has ended at lr * min_lr_ratio and stays there
        assert by_steps == pytest.approx(rule.min_lr_ratio)
    else:
        fraction = (step - rule.warmup_steps) / (span - rule.warmup_steps)
        assert by_steps == pytest.approx(cosine(fraction, rule.min_lr_ratio), abs=1e-5)
    if step > rule.warmup_steps:  # it never goes back up within a run
        assert by_steps <= lr_factor(step - 1, 0.0, rule, total)


def test_lr_factor_worked_example():
    rule = RunSettings(warmup_steps=10, min_lr_ratio=0.1, time_budget_s=100.0)
    assert [lr_factor(s, 0.0, rule, 110) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(10, 0.0, rule, 110) == 1.0  # the cosine starts at the top
    assert lr_factor(60, 0.0, rule, 110) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_factor(60, 90.0, rule, 110) == pytest.approx(cosine(0.9, 0.1))  # time is ahead
    assert lr_factor(100, 10.0, rule, 110) == pytest.approx(cosine(0.9, 0.1))  # steps are ahead
    assert lr_factor(20, 100.0, rule, 110) == pytest.approx(0.1)  # the budget is spent


def test_both_trainers_set_the_same_schedule_by_the_rule(scenes_annotations, tmp_path):
    """The same train.* settings give both tasks the same learning rate at every step: warmup,
    then the cosine, which ends at step 9 (``lr_decay_steps``) and stays at the minimum."""
    rule = RunSettings(warmup_steps=3, min_lr_ratio=0.2, lr_decay_steps=9)
    expected = [0.004 * lr_factor(step, 0.0, rule, 12) for step in range(12)]
    assert expected[:3] == pytest.approx([0.004 / 3, 0.008 / 3, 0.004])
    assert expected[9:] == [0.004 * 0.2] * 3 and expected[8] > 0.004 * 0.2
    for task in ("char_lm", "captioner"):
        out_dir = tmp_path / task
        overrides = [*SCHEDULE, "train.max_steps=12", "train.lr_decay_steps=9"]
        train_task(task, scenes_annotations, out_dir, *overrides)
        lines = train_lines(out_dir)
        assert [line["step"] for line in lines] == list(range(1, 13))
        assert [line["lr"] for line in lines] == expected, task
        # Every param group (the captioner's encoder has its own base rate) got the same factor.
        groups = load_checkpoint(out_dir / "last.pt")["optimizer"]["param_groups"]
        last = lr_factor(11, 0.0, rule, 12)
        assert [g["lr"] for g in groups] == [g["base_lr"] * last for g in groups]
        if task == "captioner":
            assert {g["base_lr"] for g in groups} == {0.004, 0.001}  # lr, encoder_lr


def test_the_captioners_epochs_count_optimizer_steps_of_accumulated_batches(
    scenes_annotations, tmp_path
):
    """With grad_accum_steps 2 an epoch of n batches is ceil(n / 2) optimizer steps, the last
    one taking what the epoch has left (so eval_every 0 evaluates at each epoch's end), and the
    cosine spans the run's optimizer steps; a resume with another accumulation counts the steps
    left from where the run is."""
    overrides = [*SCHEDULE, "train.warmup_steps=1", "train.epochs=2", "train.batch_size=4",
                 "train.eval_every=0"]  # fmt: skip
    plain = train_task("captioner", scenes_annotations, tmp_path / "plain", *overrides)
    summed = train_task(
        "captioner", scenes_annotations, tmp_path / "summed", *overrides, "train.grad_accum_steps=2"
    )
    per_epoch = plain["steps"] // 2
    assert per_epoch % 2 == 1 and summed["steps"] == 2 * (per_epoch + 1) // 2
    assert summed["stop_reason"] == plain["stop_reason"] == "epochs"
    rule = RunSettings(warmup_steps=1, min_lr_ratio=0.2)
    assert_lr_rule(train_lines(tmp_path / "summed"), 0.004, rule, summed["steps"])
    lines = read_metrics(tmp_path / "summed" / "metrics.jsonl")
    assert [line["step"] for line in lines if line["kind"] == "eval"] == [
        (per_epoch + 1) // 2,
        summed["steps"],
    ]
    # one epoch without accumulation, then a second one with it
    first = [*overrides, "train.epochs=1"]
    train_task("captioner", scenes_annotations, tmp_path / "changed", *first)
    resumed = train_task(
        "captioner", scenes_annotations, tmp_path / "changed", *overrides,
        "train.grad_accum_steps=2", resume=True,
    )  # fmt: skip
    total = per_epoch + (per_epoch + 1) // 2
    assert (resumed["steps"], resumed["stop_reason"]) == (total, "epochs")
    later = [line for line in train_lines(tmp_path / "changed") if line["step"] > per_epoch]
    assert_lr_rule(later, 0.004, rule, total)
    assert later[-1]["lr"] == pytest.approx(0.004 * 0.2, rel=0.05)  # annealed to its floor


@pytest.mark.parametrize(
    "max_steps, budget",
    [(0, 1.0), (30, 1e6)],  # no step limit: time decides; a budget far away: steps decide
)
def test_time_budget_cosine_follows_whichever_runs_out_first(tmp_path, max_steps, budget):
    overrides = [*SCHEDULE, f"train.max_steps={max_steps}", f"train.time_budget_s={budget}"]
    summary = char_lm_train.train(char_cfg(*overrides), tmp_path, quiet=True)
    rule = RunSettings(warmup_steps=3, min_lr_ratio=0.2, time_budget_s=budget)
    lines = train_lines(tmp_path)
    assert_lr_rule(lines, 0.004, rule, max_steps)
    if max_steps:
        assert summary["stop_reason"] == "max_steps" and len(lines) == 30
    else:  # stopped by the clock, the schedule annealed by it: the last step ran past half-time
        assert summary["stop_reason"] == "time_budget" and len(lines) > 3
        assert lines[-1]["lr"] < 0.004 * cosine(0.5, 0.2)


@pytest.mark.parametrize("task", ["char_lm", "captioner"])
def test_resume_takes_the_learning_rate_from_the_config(task, scenes_annotations, tmp_path, capsys):
    """Settings come from the config on resume: other base rates, weight decay and Adam beta2 are
    used from the next step (the schedule's span is fixed by lr_decay_steps, so only they change),
    and the resume says which it changes."""
    fixed = [*SCHEDULE, "train.lr_decay_steps=16"]
    train_task(task, scenes_annotations, tmp_path, *fixed, "train.max_steps=8")
    saved = load_checkpoint(tmp_path / "last.pt")["config"]["train"]
    other = [*fixed, "train.max_steps=16", "train.lr=0.002", "train.weight_decay=0.05"]
    other.append("train.adam_beta2=0.95")
    if task == "captioner":
        other.append("train.encoder_lr=0.0005")
    capsys.readouterr()
    train_task(task, scenes_annotations, tmp_path, *other, resume=True)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: the config changes the run's settings: ")
    changes = notes[0].split(": ", 2)[2].split(", ")  # in the config's order
    assert sorted(changes) == sorted(
        f"train.{key} {saved[key]!r} -> {float(value) if '.' in value else int(value)!r}"
        for key, value in (item.removeprefix("train.").split("=") for item in other[len(fixed) :])
        if saved[key] != float(value)
    )
    rule = RunSettings(warmup_steps=3, min_lr_ratio=0.2, lr_decay_steps=16)
    lines = train_lines(tmp_path)
    assert [line["step"] for line in lines] == list(range(1, 17))
    assert [line["lr"] for line in lines] == [
        (0.004 if step < 8 else 0.002) * lr_factor(step, 0.0, rule, 16) for step in range(16)
    ]
    groups = load_checkpoint(tmp_path / "last.pt")["optimizer"]["param_groups"]
    expected_base = {"char_lm": {0.002}, "captioner": {0.002, 0.0005}}[task]
    assert {g["base_lr"] for g in groups} == expected_base
    assert [g["weight_decay"] for g in groups] == [
        0.0 if g["name"].endswith("_no_decay") else 0.05 for g in groups
    ]
    assert all(g["betas"] == (0.9, 0.95) for g in groups)


@pytest.mark.parametrize("task", ["char_lm", "captioner"])
def test_resume_with_a_larger_max_steps_respans_the_cosine(task, scenes_annotations, tmp_path):
    train_task(task, scenes_annotations, tmp_path, *SCHEDULE, "train.max_steps=8")
    train_task(task, scenes_annotations, tmp_path, *SCHEDULE, "train.max_steps=16", resume=True)
    rule = RunSettings(warmup_steps=3, min_lr_ratio=0.2)
    lrs = [line["lr"] for line in train_lines(tmp_path)]
    first = [0.004 * lr_factor(step, 0.0, rule, 8) for step in range(8)]
    then = [0.004 * lr_factor(step, 0.0, rule, 16) for step in range(8, 16)]
    assert lrs == first + then
    assert lrs[8] > lrs[7]  # the docstring's warning: the rate goes back up where the new
    # schedule is at step 8, so this is not the run 16 steps straight would be


# --- one weight-decay rule ----------------------------------------------------------------------


def owned_by_no_decay_module(model: nn.Module) -> set[int]:
    return {
        id(p)
        for module in model.modules()
        if isinstance(module, NO_DECAY_MODULES)
        for p in module.parameters(recurse=False)
    }


def check_decay_rule(model: nn.Module, parts, weight_decay: float) -> list[dict]:
    groups = parameter_groups(parts, weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in trainable)  # each trainable one exactly once
    special = owned_by_no_decay_module(model)
    names = {id(p): name for name, p in model.named_parameters()}
    for group in groups:
        no_decay = group["name"].endswith("_no_decay")
        assert group["weight_decay"] == (0.0 if no_decay else weight_decay)
        for p in group["params"]:
            expected_plain = p.ndim < 2 or id(p) in special  # biases, norms, embeddings
            assert no_decay == expected_plain, names[id(p)]
    return groups


@pytest.mark.parametrize(
    "overrides",
    [[], ["model.input=onehot", "model.cell=gru", "model.num_layers=2"]],
)
def test_char_lm_weight_decay_rule(overrides):
    cfg = char_cfg(*overrides)
    model = CharLM(cfg.model, 25)
    groups = check_decay_rule(model, [("model", model, 0.01)], 0.1)
    plain = {id(p) for g in groups if g["name"] == "model_no_decay" for p in g["params"]}
    if model.embedding is not None:
        assert id(model.embedding.weight) in plain  # issue 7: char_lm decayed its embeddings
    assert id(model.head.bias) in plain and id(model.head.weight) not in plain
    core_matrices = [p for name, p in model.core.named_parameters() if p.ndim == 2]
    assert core_matrices and all(id(p) not in plain for p in core_matrices)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.finetune=all"],
        ["model.finetune=last", "model.attention=false", "model.tied_embeddings=true"],
        ["model.finetune=all", "model.top_down=true", "model.num_layers=2"],
    ],
)
def test_captioner_weight_decay_rule(scenes_annotations, overrides):
    cfg = caption_cfg(scenes_annotations, *overrides)
    model = CaptionModel(cfg, 30)
    groups = check_decay_rule(model, captioner_train.parameter_parts(model, cfg), 0.1)
    plain = {id(p) for g in groups if g["name"].endswith("_no_decay") for p in g["params"]}
    assert id(model.decoder.embedding.weight) in plain
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    trainable_norm = [p for m in norms for p in m.parameters() if p.requires_grad]
    assert trainable_norm and all(id(p) in plain for p in trainable_norm)


@pytest.mark.parametrize("task", ["char_lm", "captioner"])
def test_trainers_build_their_optimizer_by_the_rule(task, scenes_annotations, tmp_path):
    train_task(task, scenes_annotations, tmp_path, "train.max_steps=1", "train.weight_decay=0.05")
    saved = load_checkpoint(tmp_path / "last.pt")
    if task == "char_lm":
        model = CharLM(char_cfg().model, len(saved["vocab"]))
        parts = [("model", model, 0.01)]
    else:
        cfg = caption_cfg(scenes_annotations)
        model = CaptionModel(cfg, len(saved["vocab"]))
        parts = captioner_train.parameter_parts(model, cfg)
    expected = parameter_groups(parts, 0.05)
    groups = saved["optimizer"]["param_groups"]
    summary = [(g["name"], g["weight_decay"], len(g["params"])) for g in groups]
    assert summary == [(g["name"], g["weight_decay"], len(g["params"])) for g in expected]
    assert {g["weight_decay"] for g in groups} == {0.05, 0.0}


def test_the_optimizers_are_char_rnns_rmsprop_and_adamw():
    def groups() -> list[dict]:
        return [{"params": [nn.Parameter(torch.zeros(2))], "lr": 0.1}]

    rmsprop = build_optimizer(groups(), RunSettings(optimizer="rmsprop", lr=0.1))
    assert isinstance(rmsprop, torch.optim.RMSprop) and rmsprop.defaults["alpha"] == 0.95
    adamw = build_optimizer(groups(), RunSettings(optimizer="adamw", lr=0.1, adam_beta2=0.98))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.98)


# --- checkpoint cadence -------------------------------------------------------------------------


def test_last_pt_is_written_every_checkpoint_every_steps_and_seconds(tmp_path, monkeypatch):
    saves: list[tuple[str, int]] = []
    real_save = engine.save_checkpoint

    def save(payload, path):
        saves.append((Path(path).name, payload["step"]))
        real_save(payload, path)

    monkeypatch.setattr(engine, "save_checkpoint", save)
    by_steps = ["train.max_steps=20", "train.checkpoint_every=3", "train.eval_every=10"]
    char_lm_train.train(char_cfg(*by_steps), tmp_path / "steps", quiet=True)
    last = [step for name, step in saves if name == "last.pt"]
    assert last == [3, 6, 9, 10, 12, 15, 18, 20]  # every 3 steps, and at each evaluation
    assert {step for name, step in saves if name == "best.pt"} <= {10, 20}

    saves.clear()  # by the clock: a 40-step run lasts far longer than 1 ms
    by_time = ["train.max_steps=40", "train.checkpoint_every_s=0.001", "train.eval_every=1000"]
    char_lm_train.train(char_cfg(*by_time), tmp_path / "seconds", quiet=True)
    last = [step for name, step in saves if name == "last.pt"]
    assert len(last) >= 3 and last[-1] == 40 and last == sorted(set(last))


# --- non-finite losses --------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["char_lm", "captioner"])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    task, scenes_annotations, tmp_path, monkeypatch, capsys
):
    """The loss becomes NaN at step 7. The engine checks losses at metrics lines (every 5 steps)
    and before every write, so it finds it at the step-8 checkpoint, which must not be written:
    last.pt stays the one of the step-6 evaluation, byte for byte, and best.pt too."""
    model_class = CharLM if task == "char_lm" else CaptionModel
    real_forward = model_class.forward
    calls = {"train": 0}

    def forward(self, *args, **kwargs):
        outputs = real_forward(self, *args, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 7:
                loss_at = 1  # (logits, loss[, state])
                outputs = (*outputs[:loss_at], outputs[loss_at] * math.nan, *outputs[2:])
        return outputs

    monkeypatch.setattr(model_class, "forward", forward)
    written: dict[str, bytes] = {}
    real_save = engine.save_checkpoint

    def save(payload, path):
        real_save(payload, path)
        written[Path(path).name] = Path(path).read_bytes()

    monkeypatch.setattr(engine, "save_checkpoint", save)
    out_dir = tmp_path / "run"
    overrides = [
        "train.max_steps=20",
        "train.log_every=5",
        "train.checkpoint_every=4",
        "train.eval_every=3",
    ]
    if task == "char_lm":
        argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--quiet", "--set"]
        code = run_cli(char_lm_train.main, [*argv, *overrides])
    else:
        argv = ["--config", str(CAPTION_TINY), "--out-dir", str(out_dir), "--quiet", "--set"]
        annotations = [f"data.annotations={scenes_annotations}", "train.eval_max_images=2"]
        code = run_cli(captioner_train.main, [*argv, *overrides, *annotations])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and err[0].startswith("stopped: the training loss became nan at step 7")
    assert f"{out_dir / 'last.pt'} (step 6)" in err[0] and "--resume" in err[0]
    assert (out_dir / "last.pt").read_bytes() == written["last.pt"]  # the step-6 checkpoint
    assert (out_dir / "best.pt").read_bytes() == written["best.pt"]
    assert load_checkpoint(out_dir / "last.pt")["step"] == 6
    logged = read_metrics(out_dir / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in logged] == [("eval", 3), ("train", 5), ("eval", 6)]
    assert math.isfinite(logged[1]["loss"])  # no line was written with the NaN in it
    if task == "char_lm":  # in the library it is a RunStopped with the same message
        calls["train"] = 0
        with pytest.raises(RunStopped, match="at step 7") as stop:
            train_task(task, scenes_annotations, tmp_path / "lib", *overrides)
        assert stop.value.exit_code == 3


@pytest.mark.parametrize("resumed", [False, True])
def test_a_non_finite_loss_before_any_checkpoint_of_the_call_names_what_there_is(
    resumed, tmp_path, monkeypatch, capsys
):
    """NaN at the call's second step, before it saved anything: a new run has no checkpoint to
    go back to (start again); a resumed one has the last.pt it resumed from, at its step."""
    out_dir = tmp_path / "run"
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--quiet", "--set"]
    if resumed:
        assert run_cli(char_lm_train.main, [*argv, "train.max_steps=4"]) == 0
    real_forward, calls = CharLM.forward, []

    def forward(self, idx, targets=None, state=None):
        logits, loss, state = real_forward(self, idx, targets, state)
        if self.training:
            calls.append(1)
            loss = loss * math.nan if len(calls) == 2 else loss
        return logits, loss, state

    monkeypatch.setattr(CharLM, "forward", forward)
    capsys.readouterr()
    resume = ["--resume"] if resumed else []
    code = run_cli(char_lm_train.main, [*resume, *argv, "train.max_steps=20", "train.log_every=3"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    step = 6 if resumed else 2
    assert line.startswith(f"stopped: the training loss became nan at step {step}; "), line
    if resumed:
        assert f"the last good checkpoint is {out_dir / 'last.pt'} (step 4)" in line
    else:
        assert "no checkpoint was written yet" in line and not (out_dir / "last.pt").exists()


def test_non_finite_gradients_stop_the_run_before_they_reach_a_checkpoint(
    tmp_path, monkeypatch, capsys
):
    """At step 8, a checkpoint step, the loss is finite but its gradients are NaN, so the update
    makes every weight NaN. The step-8 checkpoint must not be written with those weights: the run
    stops naming step 8, and last.pt stays the step-6 one (the evaluation before)."""
    real_forward = CharLM.forward
    calls = {"train": 0}

    def forward(self, idx, targets=None, state=None):
        logits, loss, state = real_forward(self, idx, targets, state)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 8:  # the value stays, the gradient is 0 * inf = NaN
                loss = loss + 0.0 * torch.sqrt(loss - loss)
                assert math.isfinite(loss.item())
        return logits, loss, state

    monkeypatch.setattr(CharLM, "forward", forward)
    out_dir = tmp_path / "run"
    overrides = ["train.max_steps=20", "train.log_every=5", "train.checkpoint_every=4"]
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--quiet", "--set"]
    code = run_cli(char_lm_train.main, [*argv, *overrides, "train.eval_every=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1, err
    assert err[0].startswith("stopped: the gradient norm became nan at step 8"), err
    assert f"{out_dir / 'last.pt'} (step 6)" in err[0]
    saved = load_checkpoint(out_dir / "last.pt")
    assert saved["step"] == 6
    assert all(torch.isfinite(value).all() for value in saved["model"].values())


# --- the gradient norm --------------------------------------------------------------------------


class _NoData:
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, 5)
        self.norm = nn.LayerNorm(5)
        self.linear = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.linear(self.norm(self.embedding(x))), y)


X, Y = torch.tensor([1, 2, 3, 6]), torch.tensor([0, 2, 1, 1])  # the toy's one batch


def _fit_toy(
    out_dir: Path,
    rule: RunSettings,
    model: nn.Module,
    *,
    step: Callable[[Run, nn.Module], StepResult] | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    resume: bool = False,
    data: _NoData | None = None,
) -> dict:
    """`Run.fit` of ``model`` (a `_Toy`) for ``rule.max_steps`` steps on X, Y: by default each
    step is the loss on them and each evaluation that loss too (the lower, the better)."""
    run = Run(out_dir, task="char_lm", settings=rule, config={}, quiet=True, resume=resume)
    optimizer = run.optimizer([("model", model, rule.lr)])
    data = data or _NoData()
    run.restore(model, optimizer, data)
    return run.fit(
        model,
        optimizer,
        data,
        step=partial(step, run) if step else lambda net: StepResult(net(X, Y), len(X)),
        evaluate=evaluate or (lambda net: {"loss": net(X, Y).item()}),
        score_key=lambda scores: (-scores["loss"],),
        total_steps=rule.max_steps,
        unit="items/s",
        card={},
        extra=lambda: {"vocab": []},  # what every checkpoint holds
    )


def test_the_logged_gradient_norm_is_the_norm_before_clipping(tmp_path):
    rule = RunSettings(
        max_steps=1, warmup_steps=0, lr=0.5, grad_clip=0.01, weight_decay=0.1, log_every=1,
        eval_every=0, checkpoint_every_s=0, device="cpu", precision="fp32",
    )  # fmt: skip
    model = _Toy()
    reference = copy.deepcopy(model)
    _fit_toy(tmp_path, rule, model)
    # The same step by hand: backward, clip_grad_norm_ (which returns the norm before clipping),
    # AdamW on the rule's groups.
    ref_optimizer = torch.optim.AdamW(
        parameter_groups([("model", reference, rule.lr)], rule.weight_decay),
        lr=rule.lr,
        betas=(0.9, rule.adam_beta2),
    )
    reference(X, Y).backward()
    params = [p for group in ref_optimizer.param_groups for p in group["params"]]
    norm = nn.utils.clip_grad_norm_(params, rule.grad_clip)  # in the optimizer's order, as the
    # engine does: the same sum, to the last bit
    ref_optimizer.step()
    (line,) = train_lines(tmp_path)
    assert line["grad_norm"] == norm.item() and norm.item() > 10 * rule.grad_clip
    saved = load_checkpoint(tmp_path / "last.pt")["model"]
    for name, value in reference.state_dict().items():
        assert torch.equal(saved[name], value), name  # and the step used the clipped gradient


def test_a_metrics_line_holds_the_means_of_its_steps(tmp_path, record_calls):
    """log_every 3: each train line's loss and gradient norm are the means over its 3 steps."""
    clips = record_calls(nn.utils, "clip_grad_norm_")
    rule = RunSettings(
        max_steps=6, warmup_steps=0, lr=0.3, grad_clip=10.0, log_every=3, eval_every=0,
        checkpoint_every_s=0, device="cpu", precision="fp32",
    )  # fmt: skip
    torch.manual_seed(0)
    summary = _fit_toy(tmp_path, rule, _Toy())
    lines = train_lines(tmp_path)
    norms = [call.result.item() for call in clips]
    assert [line["step"] for line in lines] == [3, 6] and len(norms) == 6
    for line, start in zip(lines, (0, 3), strict=True):
        assert line["grad_norm"] == pytest.approx(sum(norms[start : start + 3]) / 3, rel=1e-5)
        losses = summary["losses"][start : start + 3]
        assert line["loss"] == pytest.approx(sum(losses) / 3, rel=1e-5)


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_batches_make_the_step_of_their_union(tmp_path, accum):
    """grad_accum_steps k: an optimizer step sums the gradients of k batches, each loss counting
    1/k, and clips, logs and schedules once. With batches of equal size (a mean loss over
    items) that is the step of one batch of all their items: the same weights, losses and
    gradient norms, step for step; the epoch ends where a batch ends it."""
    common = dict(
        max_steps=3, warmup_steps=1, lr=0.2, grad_clip=0.5, log_every=1, eval_every=0,
        checkpoint_every_s=0, device="cpu", precision="fp32",
    )  # fmt: skip
    parts = [(X[i::accum], Y[i::accum]) for i in range(accum)]  # items interleaved
    served = []

    def micro(run, net):
        x, y = parts[len(served) % accum]
        served.append(len(x))
        return StepResult(net(x, y), len(x), epoch_end=len(served) % (2 * accum) == 1)

    torch.manual_seed(0)
    whole = _Toy()
    split = copy.deepcopy(whole)
    one = _fit_toy(tmp_path / "one", RunSettings(**common), whole)
    summed = _fit_toy(
        tmp_path / "summed", RunSettings(**common, grad_accum_steps=accum), split, step=micro
    )
    assert len(served) == 3 * accum
    assert summed["losses"] == pytest.approx(one["losses"], rel=1e-6)
    for got, want in zip(
        train_lines(tmp_path / "summed"), train_lines(tmp_path / "one"), strict=True
    ):
        assert (got["step"], got["lr"]) == (want["step"], want["lr"])
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
        assert got["throughput"] > 0
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(split.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    # eval_every 0: an evaluation after each optimizer step holding a batch that ended an epoch
    lines = read_metrics(tmp_path / "summed" / "metrics.jsonl")
    assert [line["step"] for line in lines if line["kind"] == "eval"] == [1, 3]


class _EpochOfThree(_NoData):
    """Data whose epoch has three batches left, by what it says before a step."""

    def batches_to_epoch_end(self) -> int:
        return 3


def test_a_step_whose_epoch_ends_sooner_than_planned_is_the_step_of_the_batches_it_took(tmp_path):
    """The captioner's data.bad_images=skip can pass over batches: an epoch said to have three
    batches left ends with the second. The step ends there (it took the next epoch's first batch),
    each of its two losses counting 1/2: the step of one batch of their items."""
    common = dict(
        max_steps=1, warmup_steps=0, lr=0.2, grad_clip=100.0, log_every=1, eval_every=0,
        checkpoint_every_s=0, device="cpu", precision="fp32",
    )  # fmt: skip
    parts = [(X[:2], Y[:2]), (X[2:], Y[2:]), (X[:2], Y[:2])]
    served = []

    def micro(run, net):
        x, y = parts[len(served)]
        served.append(len(x))
        return StepResult(net(x, y), len(x), epoch_end=len(served) == 2)

    torch.manual_seed(0)
    whole = _Toy()
    split = copy.deepcopy(whole)
    _fit_toy(tmp_path / "one", RunSettings(**common), whole)  # X, Y: the two parts' items
    rule = RunSettings(**common, grad_accum_steps=3)
    _fit_toy(tmp_path / "short", rule, split, step=micro, data=_EpochOfThree())
    assert served == [2, 2]
    (got,), (want,) = train_lines(tmp_path / "short"), train_lines(tmp_path / "one")
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(split.state_dict()[name], value, rtol=1e-6, atol=1e-7)


def test_a_gradient_scaler_skips_non_finite_gradients_and_the_run_goes_on(tmp_path, monkeypatch):
    """Under fp16 the engine's gradient scaler skips a step whose gradients overflow, and lowers
    its scale: that is no reason to stop (CUDA-only in real runs; here the same scaler on the
    CPU). Step 2's gradients are NaN behind a finite loss: the weights stay as step 1 left them."""
    monkeypatch.setattr(
        Precision, "grad_scaler", lambda self: torch.amp.GradScaler("cpu", init_scale=1.0)
    )
    saved: dict[int, dict[str, torch.Tensor]] = {}
    real_save = engine.save_checkpoint

    def save(payload, path):
        saved[payload["step"]] = {k: v.clone() for k, v in payload["model"].items()}
        real_save(payload, path)

    monkeypatch.setattr(engine, "save_checkpoint", save)
    rule = RunSettings(
        max_steps=3, warmup_steps=0, log_every=1, eval_every=0, checkpoint_every=1,
        checkpoint_every_s=0, device="cpu", precision="fp32",
    )  # fmt: skip
    calls = {"steps": 0}

    def step(run: Run, net: nn.Module) -> StepResult:
        calls["steps"] += 1
        loss = net(X, Y)
        if calls["steps"] == 2:
            loss = loss + 0.0 * torch.sqrt(loss - loss)  # finite value, NaN gradient
        return StepResult(loss, len(X))

    summary = _fit_toy(tmp_path, rule, _Toy(), step=step)
    assert summary["steps"] == 3
    grad_norms = [line["grad_norm"] for line in train_lines(tmp_path)]
    assert math.isfinite(grad_norms[0]) and not math.isfinite(grad_norms[1])
    for name, value in saved[1].items():
        assert torch.equal(saved[2][name], value), name  # the scaler skipped step 2
        assert torch.isfinite(saved[3][name]).all() and not torch.equal(saved[3][name], value)


def test_char_lm_logs_the_gradient_norm_of_its_step(tmp_path, monkeypatch):
    """A one-step char_lm run: its logged gradient norm is clip_grad_norm_'s on a copy of the model
    as it was at that step, fed the same window."""
    seen = {}
    real_forward = CharLM.forward

    def forward(self, idx, targets=None, state=None):
        if self.training and not seen:
            seen.update(model=copy.deepcopy(self), args=(idx.clone(), targets.clone(), state))
        return real_forward(self, idx, targets, state)

    monkeypatch.setattr(CharLM, "forward", forward)
    overrides = ["train.max_steps=1", "train.log_every=1", "model.dropout=0", "train.grad_clip=0.5"]
    char_lm_train.train(char_cfg(*overrides), tmp_path, quiet=True)
    monkeypatch.setattr(CharLM, "forward", real_forward)
    model = seen["model"]
    _, loss, _ = model(*seen["args"])
    loss.backward()
    norm = nn.utils.clip_grad_norm_(list(model.parameters()), 0.5)
    (line,) = train_lines(tmp_path)
    assert line["grad_norm"] == pytest.approx(norm.item(), rel=1e-6) and norm.item() > 0


# --- the progress bar in a terminal (issue 13 item 4) -------------------------------------------


def render_terminal(raw: str, columns: int) -> list[str]:
    """The rows a terminal shows for ``raw``: ``\\r`` returns to the row's start, ``\\n`` starts a
    new row, a character past the last column wraps."""
    rows: list[list[str]] = [[]]
    column = 0
    for char in raw:
        if char == "\r":
            column = 0
        elif char == "\n":
            rows.append([])
            column = 0
        else:
            if column >= columns:
                rows.append([])
                column = 0
            row = rows[-1]
            row.extend(" " * (column + 1 - len(row)))
            row[column] = char
            column += 1
    return ["".join(row).rstrip() for row in rows]


def test_the_progress_bar_ends_as_one_line_in_a_terminal(tmp_path):
    columns = 100
    primary, secondary = os.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    args = ["--config", str(CHAR_TINY), "--out-dir", str(tmp_path), "--set", "train.max_steps=30"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "char_lm.train", *args],
        stdin=subprocess.DEVNULL,
        stdout=secondary,  # stdout and stderr share the terminal, as in a shell
        stderr=secondary,
        cwd=REPO,
        env=env,
    )
    os.close(secondary)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
        assert process.wait(timeout=120) == 0
    rows = render_terminal(b"".join(chunks).decode("utf-8", errors="replace"), columns)
    bars = [row for row in rows if row.startswith("train:")]
    assert len(bars) == 1 and "100%" in bars[0] and "30/30" in bars[0], rows
    done = next(i for i, row in enumerate(rows) if row.startswith("done: 30 steps"))
    assert rows.index(bars[0]) == done - 1  # the bar stays above the summary line
    evaluations = [row for row in rows if row.startswith("step ")]
    assert [row.split(":")[0] for row in evaluations] == ["step 10", "step 20", "step 30"]


def test_a_non_finite_score_is_never_the_best_and_never_blocks_a_better_one(tmp_path):
    """A validation that gives NaN (its first one, say) is worse than any finite score: best.pt
    follows the finite scores after it (a NaN best compared False with everything, forever)."""
    rule = RunSettings(
        max_steps=4, warmup_steps=0, lr=0.1, log_every=1, eval_every=1, checkpoint_every_s=0,
        device="cpu", precision="fp32",
    )  # fmt: skip
    losses = iter([math.nan, 2.0, math.inf, 1.5])
    summary = _fit_toy(tmp_path, rule, _Toy(), evaluate=lambda net: {"loss": next(losses)})
    assert summary["best_step"] == 4 and summary["best_scores"] == {"loss": 1.5}
    evals = [r["best"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals == [True, True, False, True]  # the first is best only for want of another
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 4


def test_a_run_older_than_a_key_resumes_as_it_trained_or_says_what_changes(tmp_path, capsys):
    """A char_lm run begun before data.state_reset existed (2026-12-05) never restarted its
    streams' state: its checkpoint is read as state_reset 0, not today's default 0.02. Resumed
    with its own config file (which has no such line) it goes on with 0.02, and says so; resumed
    with 0 it is the run that never stopped. A checkpoint no run can go on from names
    --init-from, not a new run in the same folder (which only --overwrite would allow, deleting
    the older weights)."""
    old_yaml = tmp_path / "tiny_older.yaml"
    old_yaml.write_text(
        "".join(
            line for line in CHAR_TINY.read_text().splitlines(True) if "state_reset" not in line
        )
    )

    def cfg(*overrides: str) -> CharLMConfig:
        fixed = ["train.lr_decay_steps=6", "train.eval_every=3", "train.log_every=1"]
        return load_config(CharLMConfig, old_yaml, [*fixed, *overrides])

    whole = char_lm_train.train(cfg("train.max_steps=6", "data.state_reset=0"), tmp_path / "whole")
    run = tmp_path / "run"
    char_lm_train.train(cfg("train.max_steps=3", "data.state_reset=0"), run, quiet=True)
    for name in ("last.pt", "best.pt"):  # as the older version wrote them
        payload = load_checkpoint(run / name)
        del payload["config"]["data"]["state_reset"]
        save_checkpoint(payload, run / name)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    capsys.readouterr()
    char_lm_train.train(cfg("train.max_steps=6"), run, resume=True, quiet=True)
    said = capsys.readouterr().out
    assert (
        "note: the config changes the run's settings: data.state_reset 0.0 -> 0.02 (the run "
        "predates this key), train.max_steps 3 -> 6\n"
    ) in said
    same = char_lm_train.train(
        cfg("train.max_steps=6", "data.state_reset=0"), copy, resume=True, quiet=True
    )
    assert "state_reset" not in capsys.readouterr().out
    assert [h["val_loss"] for h in same["history"]] == [h["val_loss"] for h in whole["history"]]

    payload = load_checkpoint(copy / "last.pt")
    payload["format_version"] = 1
    save_checkpoint(payload, copy / "last.pt")
    with pytest.raises(UserError) as refused:
        char_lm_train.train(cfg("train.max_steps=9"), copy, resume=True, quiet=True)
    assert str(refused.value).endswith(
        f"start a new run from its weights: --init-from {copy / 'last.pt'} --out-dir ANOTHER_FOLDER"
    )
    started = char_lm_train.train(
        cfg("train.max_steps=7"), tmp_path / "another", init_from=copy / "last.pt", quiet=True
    )
    assert started["steps"] == 7


def test_a_windows_throughput_leaves_out_its_evaluations_and_saves(tmp_path, monkeypatch):
    """A metrics line's throughput is its steps' items over its steps' time: with each step
    taking 1 (clock) second and each evaluation 100, 4 items a step are 4 items/s (the window
    of 4 steps that held an evaluation said 0.04 items/s)."""
    import time as time_module

    real, skipped = time_module.perf_counter, [0.0]
    monkeypatch.setattr(time_module, "perf_counter", lambda: real() + skipped[0])

    def step(run: Run, net: nn.Module) -> StepResult:
        skipped[0] += 1.0
        return StepResult(net(X, Y), len(X))

    def slow_evaluation(net: nn.Module) -> dict[str, float]:
        skipped[0] += 100.0  # the clock moves on while validating
        return {"loss": net(X, Y).item()}

    rule = RunSettings(
        max_steps=8, warmup_steps=0, lr=0.1, log_every=4, eval_every=2, checkpoint_every=3,
        checkpoint_every_s=0, device="cpu", precision="fp32",
    )  # fmt: skip
    summary = _fit_toy(tmp_path, rule, _Toy(), step=step, evaluate=slow_evaluation)
    lines = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in lines] == [4, 8]
    assert [r["throughput"] for r in lines] == [pytest.approx(4.0, rel=0.05)] * 2
    assert summary["time_s"] > 400  # the whole call's figure counts them


def test_damaged_stream_shares_in_last_pt_are_one_line(tmp_path):
    run = tmp_path / "run"
    char_lm_train.train(char_cfg("train.max_steps=2"), run, quiet=True)
    payload = load_checkpoint(run / "last.pt")
    share = dict(payload["data"][0])
    payload["data"][0]["state"] = torch.zeros(5)  # torch.cat raised IndexError: a traceback
    save_checkpoint(payload, run / "last.pt")
    with pytest.raises(UserError, match="damaged training state .*--init-from .*ANOTHER_FOLDER"):
        char_lm_train.train(char_cfg("train.max_steps=3"), run, resume=True, quiet=True)
    payload["data"] = []
    save_checkpoint(payload, run / "last.pt")
    with pytest.raises(UserError, match="damaged training state"):
        char_lm_train.train(char_cfg("train.max_steps=3"), run, resume=True, quiet=True)
    payload["data"] = [{**share, "block_size": 0}]  # walking on in the new windows divided by it
    save_checkpoint(payload, run / "last.pt")
    with pytest.raises(UserError, match="damaged training state"):
        char_lm_train.train(char_cfg("train.max_steps=3"), run, resume=True, quiet=True)


def test_a_last_pt_after_its_runs_best_says_where_the_best_scores_were_measured(tmp_path):
    """The card of last.pt gave its own step beside the run's best scores, measured on another
    step's weights (the app's card and picker read as if these weights scored them)."""
    from crnn_app.cards import card_rows, model_card
    from crnn_app.models_dir import list_checkpoints

    run = tmp_path / "run"
    char_lm_train.train(char_cfg("train.max_steps=3", "train.eval_every=3"), run, quiet=True)
    worse = ("train.max_steps=6", "train.eval_every=3", "train.lr=10", "train.warmup_steps=0")
    summary = char_lm_train.train(char_cfg(*worse), run, resume=True, quiet=True)
    assert (summary["best_step"], summary["steps"]) == (3, 6)  # the later model is worse
    rows = dict(card_rows(model_card(load_checkpoint(run / "last.pt"))))
    assert rows["steps"] == "6"
    trained_on = len(load_corpus(char_cfg().data).train_ids)  # the validation part left out
    assert rows["data"].endswith(f", {trained_on:,} training characters"), rows
    assert rows["best scores"].endswith(" (at step 3, not these weights')"), rows
    best = dict(card_rows(model_card(load_checkpoint(run / "best.pt"))))
    assert best["steps"] == "3" and "at step" not in best["best scores"]
    summaries = {entry.name: entry.summary for entry in list_checkpoints(run).entries}
    assert summaries["last.pt"].endswith(" nats/char (best, at step 3)"), summaries
    assert summaries["best.pt"].endswith(" nats/char"), summaries


def test_the_run_time_of_a_resumed_run_counts_its_earlier_calls(tmp_path):
    rule = RunSettings(
        max_steps=4, warmup_steps=0, lr=0.1, eval_every=2, checkpoint_every_s=0, device="cpu",
        precision="fp32",
    )  # fmt: skip
    first = _fit_toy(tmp_path, rule, _Toy())
    assert first["run_time_s"] == first["time_s"]
    before = load_checkpoint(tmp_path / "last.pt")["progress"]["elapsed_s"]
    second = _fit_toy(tmp_path, dataclasses.replace(rule, max_steps=8), _Toy(), resume=True)
    assert second["run_time_s"] == pytest.approx(before + second["time_s"])
    assert captioner_train._seconds(second).endswith(f" s ({second['time_s']:.0f} s in this call)")
    assert captioner_train._seconds(first) == f"{first['time_s']:.0f} s"


def test_a_resume_in_the_middle_of_a_logging_window_logs_the_same_figures(tmp_path):
    """A step's figures (self-critical training's rewards, say) are averaged over the steps of a
    metrics line: a run stopped at step 7 and resumed to 10 logs the same mean at step 10 as the
    run that never stopped (it averaged steps 8-10 only)."""

    def run_to(out_dir: Path, steps: int, resume: bool) -> None:
        rule = RunSettings(
            max_steps=steps, lr_decay_steps=10, warmup_steps=0, lr=0.1, log_every=5,
            eval_every=0, checkpoint_every_s=0, device="cpu", precision="fp32",
        )  # fmt: skip
        torch.manual_seed(0)

        def step(run: Run, net: nn.Module) -> StepResult:
            return StepResult(net(X, Y), len(X), figures={"f": float(run.progress.step + 1) ** 2})

        _fit_toy(
            out_dir, rule, _Toy(), step=step, evaluate=lambda net: {"loss": 0.0}, resume=resume
        )

    run_to(tmp_path / "straight", 10, resume=False)
    run_to(tmp_path / "resumed", 7, resume=False)
    run_to(tmp_path / "resumed", 10, resume=True)
    straight, resumed = (
        [(r["step"], r["f"], r["loss"]) for r in train_lines(tmp_path / name)]
        for name in ("straight", "resumed")
    )
    assert straight == [(5, 11.0, straight[0][2]), (10, 66.0, straight[1][2])]  # means of k^2
    assert resumed[-1] == straight[-1]


def test_patience_counts_evaluations_since_the_best_across_a_resume(tmp_path):
    """Patience 2 stops at the second evaluation in a row without a better score: a better one
    starts the count again, a resume keeps it, and each evaluation's train_loss is the mean of the
    steps since the one before. The time spent so far travels in the checkpoint."""
    losses = iter([3.0, 4.0, 2.0, 5.0, 6.0, 7.0, 8.0, 9.0])

    def run(max_steps: int, resume: bool) -> dict:
        rule = RunSettings(
            max_steps=max_steps, lr_decay_steps=8, warmup_steps=0, lr=0.1, log_every=1,
            eval_every=1, patience=2, checkpoint_every_s=0, device="cpu", precision="fp32",
        )  # fmt: skip
        torch.manual_seed(0)
        evaluate = lambda net: {"loss": next(losses)}  # noqa: E731
        return _fit_toy(tmp_path, rule, _Toy(), evaluate=evaluate, resume=resume)

    first = run(4, resume=False)  # 3 (best), 4, 2 (best: the count starts again), 5
    assert first["stop_reason"] == "max_steps" and first["best_step"] == 3
    saved = load_checkpoint(tmp_path / "last.pt")["progress"]
    assert saved["bad_evals"] == 1 and saved["elapsed_s"] == first["elapsed_s"] > 0
    second = run(8, resume=True)  # 6: the second in a row without a better score
    assert second["steps"] == 5 and second["stop_reason"] == "patience"
    assert second["elapsed_s"] > first["elapsed_s"]
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    steps = {r["step"]: r["loss"] for r in train_lines(tmp_path)}
    assert [r["step"] for r in evals] == [1, 2, 3, 4, 5]
    assert [r["train_loss"] for r in evals] == pytest.approx([steps[s] for s in range(1, 6)])


def test_a_tensorboard_torch_cannot_import_is_not_said_to_be_missing(tmp_path, monkeypatch):
    """A ModuleNotFoundError of another module than tensorboard itself (here torch's own
    tensorboard module) says torch cannot use it, quoting why (kills: any ModuleNotFoundError
    taken for tensorboard not installed)."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError) as refused:
        MetricsLog(tmp_path, resumed_step=None, tensorboard=True, enabled=True)
    message = str(refused.value)
    assert message.startswith("train.tensorboard is on but torch cannot use the installed "
                              "tensorboard (import of torch.utils.tensorboard halted")  # fmt: skip
