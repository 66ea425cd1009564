"""metrics.jsonl and TensorBoard across crashes and resumes (in-process, CPU, seconds).

A run that crashes after some checkpoint has logged steps past it; its resume drops them (and a
half-written last line) and logs them again, so the resumed run's log equals an uninterrupted run's
line for line: no step missing, none twice. Evaluation lines carry the scores. With
``train.tensorboard`` the event files hold the same numbers, as TensorBoard itself reads them back.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tensorboard
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import captioner.train as captioner_train
import char_lm.train as char_lm_train
from captioner.config import CaptionerConfig
from char_lm.config import CharLMConfig
from recurrent import engine
from recurrent.config import load_config
from recurrent.engine import read_metrics
from recurrent.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SCORES = {"char_lm": {"val_loss"}, "captioner": {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}}
TRAIN_KEYS = ("step", "loss", "lr", "grad_norm")  # not time, timestamp, throughput: the clock's
EVAL_KEYS = ("step", "train_loss", "best", "scores")
# 14 steps; lines every 2 steps, evaluations every 5, checkpoints every 4: saves at 4, 5, 8, 10,
# 12, 14. The crash comes at the step-8 write, so last.pt is the step-5 one (odd: the resumed step-6
# line averages steps 5 and 6, one from each process) and lines 6 and 8 were already logged.
RUN = [
    "train.max_steps=14",
    "train.log_every=2",
    "train.eval_every=5",
    "train.checkpoint_every=4",
    "train.tensorboard=true",
]


def train_task(task: str, annotations: Path, out_dir: Path, *overrides: str, **kwargs) -> dict:
    if task == "char_lm":
        cfg = load_config(CharLMConfig, REPO / "configs/char_lm/tiny.yaml", list(overrides))
        return char_lm_train.train(cfg, out_dir, quiet=True, **kwargs)
    base = [f"data.annotations={annotations}", "train.eval_max_images=2"]
    cfg = load_config(CaptionerConfig, REPO / "configs/captioner/tiny.yaml", base + list(overrides))
    return captioner_train.train(cfg, out_dir, quiet=True, **kwargs)


def comparable(records: list[dict]) -> list[tuple]:
    keys = {"train": TRAIN_KEYS, "eval": EVAL_KEYS}
    return [(r["kind"], *(r[k] for k in keys[r["kind"]])) for r in records]


def tensorboard_scalars(out_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def scalars_from_metrics(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    scalars: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r["kind"] == "train":
            for key in ("loss", "lr", "grad_norm", "throughput"):
                scalars.setdefault(f"train/{key}", []).append((r["step"], r[key]))
        else:
            for key, value in r["scores"].items():
                scalars.setdefault(f"val/{key}", []).append((r["step"], value))
    return scalars


def assert_same_scalars(tensorboard: dict, expected: dict) -> None:
    assert tensorboard.keys() == expected.keys()
    for tag, points in expected.items():
        assert [step for step, _ in tensorboard[tag]] == [step for step, _ in points], tag
        # TensorBoard keeps float32
        assert [v for _, v in tensorboard[tag]] == pytest.approx([v for _, v in points], rel=1e-6)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("task", ["char_lm", "captioner"])
def test_metrics_continue_across_a_resume_like_an_uninterrupted_run(
    task, scenes_annotations, tmp_path, monkeypatch
):
    train_task(task, scenes_annotations, tmp_path / "straight", *RUN)
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")

    real_save = engine.save_checkpoint

    def crash_at_step_8(payload, path):
        if payload["step"] == 8:
            raise _Crash  # the machine goes down before the step-8 checkpoint is written
        real_save(payload, path)

    monkeypatch.setattr(engine, "save_checkpoint", crash_at_step_8)
    out_dir = tmp_path / "crashed"
    with pytest.raises(_Crash):
        train_task(task, scenes_annotations, out_dir, *RUN)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    crashed = read_metrics(out_dir / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in crashed] == [
        ("train", 2),
        ("train", 4),
        ("eval", 5),
        ("train", 6),
        ("train", 8),
    ]
    with (out_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "step": 10, "lo')  # a line cut off by the crash

    summary = train_task(task, scenes_annotations, out_dir, *RUN, resume=True)
    text = (out_dir / "metrics.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line whole
    assert text.endswith("\n") and summary["metrics"] == records
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [2, 4, 6, 8, 10, 12, 14]  # none missing, none twice
    assert [r["step"] for r in records if r["kind"] == "eval"] == [5, 10, 14]
    assert comparable(records) == comparable(straight)  # bit for bit: losses, lr, grad norms
    for record in records:
        if record["kind"] == "eval":
            assert set(record["scores"]) == SCORES[task]
        else:
            assert record["throughput"] > 0 and record["time_s"] >= 0

    # TensorBoard: the same numbers; the resumed run's events replace the crashed run's past
    # step 5 (purge_step), as TensorBoard's own reader shows them.
    assert_same_scalars(tensorboard_scalars(out_dir), scalars_from_metrics(records))
    straight_dir = tmp_path / "straight"
    assert_same_scalars(tensorboard_scalars(straight_dir), scalars_from_metrics(straight))


def test_a_run_started_afresh_replaces_the_old_log(tmp_path):
    """--overwrite starts a new log: metrics.jsonl and the TensorBoard view hold the new run only."""
    train_task("char_lm", Path(), tmp_path, *RUN, "train.seed=1")
    train_task("char_lm", Path(), tmp_path, *RUN, "train.max_steps=6", overwrite=True)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6]
    assert_same_scalars(tensorboard_scalars(tmp_path), scalars_from_metrics(records))


def test_the_tensorboard_program_reads_a_runs_events(tmp_path):
    """What a user runs to look at a run, `tensorboard --logdir RUN/tensorboard`, starts and finds
    every logged step. Its --inspect mode loads the plugins that serving does: tensorboard before
    2.21 imports pkg_resources there, which setuptools 81 removed (docs/robustness.md, 18)."""
    train_task("char_lm", Path(), tmp_path, *RUN)
    program = Path(sys.executable).parent / "tensorboard"
    args = ["--inspect", "--logdir", str(tmp_path / "tensorboard"), "--tag", "train/loss"]
    done = subprocess.run([program, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stats = dict(re.findall(r"^ +(\w+) +(\S+)$", done.stdout, re.MULTILINE))
    assert (stats["first_step"], stats["last_step"], stats["num_steps"]) == ("2", "14", "7")


def test_a_missing_or_unusable_tensorboard_is_one_line_before_any_step(tmp_path, monkeypatch):
    """Not installed, or one torch refuses (before 1.15): the run stops at once with what to do."""
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.setattr(tensorboard, "__version__", "1.14.0")
    with pytest.raises(UserError) as refused:
        train_task("char_lm", Path(), tmp_path / "old", *RUN)
    assert str(refused.value) == (
        "train.tensorboard is on but torch cannot use the installed tensorboard (TensorBoard "
        "logging requires TensorBoard version 1.15 or above); pip install -U 'tensorboard>=2.21' "
        "(the project's 'tensorboard' extra)"
    )
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what an import finds when missing
    with pytest.raises(
        UserError, match="^train.tensorboard is on but tensorboard is not installed;"
    ):
        train_task("char_lm", Path(), tmp_path / "missing", *RUN)
    assert not (tmp_path / "missing" / "metrics.jsonl").exists()


line_records = st.lists(
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["train", "eval"]),
            "step": st.integers(0, 10**6),
            "loss": st.floats(allow_nan=False, allow_infinity=False),
            "note": st.text(max_size=8),
        }
    ),
    max_size=6,
)


@settings(max_examples=100, deadline=None)
@given(records=line_records, cut=st.integers(0, 400), garbage=st.sampled_from(["", "{", "x\n"]))
def test_read_metrics_keeps_whole_lines_only(tmp_path_factory, records, cut, garbage):
    """A log cut at any byte (a kill mid-write) reads as the records whose lines are whole."""
    path = tmp_path_factory.mktemp("log") / "metrics.jsonl"
    lines = [json.dumps(r) for r in records]
    data = "".join(line + "\n" for line in lines).encode()[:cut] + garbage.encode()
    path.write_bytes(data)
    whole, offset = [], 0
    for record, line in zip(records, lines, strict=True):
        end = offset + len(line.encode())
        if end > cut or (end == cut and garbage):  # cut short, or garbage glued to it
            break
        whole.append(record)
        offset = end + 1
    assert read_metrics(path) == whole
