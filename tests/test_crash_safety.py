"""Runs that survive Ctrl-C, pre-emption and kill -9, for both tasks (issue 7, part 2).

Each test drives real training processes and compares what they leave behind with an
uninterrupted run of the same config, trained in this process: on the CPU, resume is exact, so the
final weights and every logged loss, learning rate and gradient norm must be equal to the bit.

- Signals: ``python -m char_lm.train`` / ``python -m captioner.train``, started as a user starts
  it, gets SIGINT (Ctrl-C: exit 130); its resume gets SIGTERM (pre-emption: exit 143). Each leaves
  ``last.pt`` at the step named in one ``stopped:`` line, and ``--resume`` finishes the run.
- kill -9 lands at seeded random moments: a few per run, each after the process has logged a
  seeded random step, plus a random delay, so it hits a step, a checkpoint write or a metrics line
  alike.
- Starting Python and torch costs about ten seconds on the shared test machine, so all processes
  but the first of each signal test are forked from a server that imported the trainers once
  (`multiprocessing`'s forkserver); each runs the CLI's own ``main`` through `run_cli`, which is
  what ``python -m`` runs, and gets real signals (SIGTERM, SIGKILL).
- A kill in the middle of a checkpoint write (torch.save patched in the child to write half the
  bytes, then SIGKILL itself) leaves the previous checkpoint readable, and a resume continues.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import io
import multiprocessing
import os
import random
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import torch

import captioner.train as captioner_train
import char_lm.train as char_lm_train
from captioner.config import CaptionerConfig
from char_lm.config import CharLMConfig
from recurrent.checkpoint import load_checkpoint
from recurrent.config import load_config
from recurrent.engine import read_metrics
from recurrent.errors import run_cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "char_lm": REPO / "configs/char_lm/tiny.yaml",
    "captioner": REPO / "configs/captioner/tiny.yaml",
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
FORKSERVER = multiprocessing.get_context("forkserver")
TRAIN_KEYS = ("step", "loss", "lr", "grad_norm")  # not time or throughput: those are the clock's
EVAL_KEYS = ("step", "train_loss", "best", "scores")


def task_overrides(task: str, annotations: Path) -> list[str]:
    """What every run of a task here has: dropout on (so the random-number state must resume too),
    a small validation."""
    if task == "char_lm":
        return ["model.dropout=0.2"]
    return [f"data.annotations={annotations}", "train.eval_max_images=2", "model.dropout=0.3"]


def train_in_process(task: str, out_dir: Path, overrides: list[str]) -> dict:
    cfg_class = CharLMConfig if task == "char_lm" else CaptionerConfig
    module = char_lm_train if task == "char_lm" else captioner_train
    cfg = load_config(cfg_class, CONFIGS[task], overrides)
    return module.train(cfg, out_dir, quiet=True)


def cli_args(task: str, out_dir: Path, overrides: list[str], *, resume: bool) -> list[str]:
    args = ["--config", str(CONFIGS[task]), "--out-dir", str(out_dir)]
    return [*args, *(["--resume"] if resume else []), "--set", *overrides]


def comparable(out_dir: Path) -> list[tuple]:
    keys = {"train": TRAIN_KEYS, "eval": EVAL_KEYS}
    records = read_metrics(out_dir / "metrics.jsonl")
    return [(r["kind"], *(r[k] for k in keys[r["kind"]])) for r in records]


def assert_same_run(out_dir: Path, reference: Path) -> None:
    """The final weights, optimizer moments and metrics log of two runs are equal to the bit."""
    ours, theirs = load_checkpoint(out_dir / "last.pt"), load_checkpoint(reference / "last.pt")
    assert ours["step"] == theirs["step"]
    assert ours["model"].keys() == theirs["model"].keys()
    for name, value in theirs["model"].items():
        assert torch.equal(ours["model"][name], value), name
    moments = ours["optimizer"]["state"]
    for index, state in theirs["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(moments[index][name]), torch.as_tensor(value))
    assert comparable(out_dir) == comparable(reference)


class Trainer:
    """A training process, started either way: ``python -m`` (`start_cli`) or forked (`start_child`);
    its output goes to LOG.out and LOG.err."""

    def __init__(
        self, process: subprocess.Popen | multiprocessing.Process, log: Path, since: float
    ):
        self.process, self.log, self.since = process, log, since

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        if isinstance(self.process, subprocess.Popen):
            return self.process.poll() is None
        return self.process.is_alive()

    def wait(self, timeout: float = 300) -> int | None:
        """The exit status (negative: the signal that killed it)."""
        if isinstance(self.process, subprocess.Popen):
            return self.process.wait(timeout=timeout)
        self.process.join(timeout=timeout)
        return self.process.exitcode

    def stderr(self) -> str:
        return self.log.with_suffix(".err").read_text()

    def wait_for_step(self, metrics: Path, step: int, timeout: float = 180) -> bool:
        """Wait until this process logs a train line at ``step`` or later (True), or ends (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(
                r["kind"] == "train" and r["timestamp"] >= self.since and r["step"] >= step
                for r in read_metrics(metrics)
            ):
                return True
            if not self.running():
                return False
            time.sleep(0.01)
        raise AssertionError(f"no train line at step {step} or later in {timeout} s")

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running():
            self.process.kill()
        self.wait()


def start_cli(task: str, args: list[str], log: Path, *, own_group: bool = False) -> Trainer:
    """``python -m <task>.train ARGS``, as a user runs it (with ``own_group``, as the leader of a
    new process group, which its DataLoader workers join)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    since = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", f"{task}.train", *args],
        cwd=REPO,
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=log.with_suffix(".out").open("w"),
        stderr=log.with_suffix(".err").open("w"),
        start_new_session=own_group,
    )
    return Trainer(process, log, since)


@pytest.fixture(scope="module", autouse=True)
def forkserver_with_the_trainers():
    """The fork server imports torch and both trainers once; its children start in a moment."""
    FORKSERVER.set_forkserver_preload(["char_lm.train", "captioner.train", __name__])


def _child(task: str, argv: list[str], log: str, tear_at_step: int | None) -> None:
    """A forked training process: the CLI's ``main`` through `run_cli`, as ``python -m`` runs it.
    With ``tear_at_step``, the first checkpoint write of that step stops half-way through its
    bytes and the process SIGKILLs itself."""
    torch.set_num_threads(1)  # as the reference run in the test process
    out, err = open(log + ".out", "w", buffering=1), open(log + ".err", "w", buffering=1)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdout, sys.stderr = out, err
    if tear_at_step is not None:
        real_save = torch.save

        def torn_save(payload, handle, *args, **kwargs):
            if payload.get("step") != tear_at_step:
                return real_save(payload, handle, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(payload, buffer, *args, **kwargs)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = torn_save
    code = run_cli(importlib.import_module(f"{task}.train").main, argv)
    out.flush()
    err.flush()
    sys.exit(code)


def start_child(task: str, argv: list[str], log: Path, tear_at_step: int | None = None) -> Trainer:
    since = time.time()
    process = FORKSERVER.Process(target=_child, args=(task, argv, str(log), tear_at_step))
    process.start()
    return Trainer(process, log, since)


# --- signals ------------------------------------------------------------------------------------


def stop_with(
    signum: int, trainer: Trainer, out_dir: Path, after_step: int, *, group: bool = False
) -> int:
    """Send ``signum`` (to the trainer's whole process group with ``group``) once the trainer has
    logged a step past ``after_step``; check its exit status and its one ``stopped:`` line, and
    return the step that line names."""
    assert trainer.wait_for_step(out_dir / "metrics.jsonl", after_step + 1), trainer.stderr()
    (os.killpg if group else os.kill)(trainer.pid, signum)
    return stopped_step(signal.Signals(signum).name, trainer, out_dir, after_step)


def stopped_step(said: str, trainer: Trainer, out_dir: Path, after_step: int) -> int:
    """Wait for a trainer that a signal stops; check its exit status and its one ``stopped:``
    line, which names the signal as ``said``, and return the step that line names."""
    code = trainer.wait(timeout=120)
    lines = trainer.stderr().strip().splitlines()
    assert code == 128 + signal.Signals[said.split()[0]], lines  # 130 SIGINT, 143 SIGTERM, ...
    assert len(lines) == 1, lines  # no traceback, no progress bar (stderr is not a terminal)
    prefix = f"stopped: {said} at step "
    assert lines[0].startswith(prefix), lines
    step = int(lines[0][len(prefix) :].split(":")[0])
    assert f"{out_dir / 'last.pt'} is saved" in lines[0]
    assert "run the same command with --resume to continue" in lines[0]
    assert load_checkpoint(out_dir / "last.pt")["step"] == step > after_step
    return step


@pytest.mark.parametrize("task", ["char_lm", "captioner"])
def test_sigint_then_sigterm_stop_cleanly_and_resume_exactly(
    task, scenes_annotations, tmp_path, capsys
):
    """Ctrl-C a run, resume it, pre-empt it (SIGTERM), resume it to the end: the same run as one
    never stopped.

    The Ctrl-C'd process is ``python -m <task>.train`` as a user starts it; the resumed one is a
    forked child (see the module docstring). Both are given a step limit they would take minutes
    to reach, so that a signal always finds them training; the last resume sets the limit a few
    steps past the second stop. The cosine's length is fixed by ``train.lr_decay_steps``, so the
    step limit only says where the run ends (the engine's rule), and the reference run trains to
    that same step.
    """
    decay = {"char_lm": 60, "captioner": 16}[task]
    base = [*task_overrides(task, scenes_annotations), f"train.lr_decay_steps={decay}"]
    base += ["train.log_every=1", "train.eval_every=5"]
    endless = [*base, "train.max_steps=1_000_000"]
    out_dir = tmp_path / "run"

    args = cli_args(task, out_dir, endless, resume=False)
    with start_cli(task, args, tmp_path / "interrupted") as trainer:
        first = stop_with(signal.SIGINT, trainer, out_dir, 0)
    args = cli_args(task, out_dir, endless, resume=True)
    with start_child(task, args, tmp_path / "preempted") as trainer:
        second = stop_with(signal.SIGTERM, trainer, out_dir, first)

    end = second + (20 if task == "char_lm" else 3)
    finish = [*base, f"train.max_steps={end}"]
    main = (char_lm_train if task == "char_lm" else captioner_train).main
    capsys.readouterr()  # the same command with --resume, in this process
    assert run_cli(main, [*cli_args(task, out_dir, finish, resume=True), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {out_dir / 'last.pt'} at step {second}" in out
    assert f"done: {end} steps (stopped by max_steps)" in out
    train_in_process(task, tmp_path / "reference", finish)
    assert_same_run(out_dir, tmp_path / "reference")


def test_sigterm_to_the_process_group_leaves_the_stop_to_the_main_process(
    scenes_annotations, tmp_path
):
    """A scheduler's pre-emption signals every process of the job, DataLoader workers included
    (training and validation loaders here). The workers leave it to the main process, which saves
    and stops with one line; torch's own handler ended them, and the main process then failed
    mid-step with a traceback and its last steps unsaved."""
    overrides = [*task_overrides("captioner", scenes_annotations), "train.max_steps=1_000_000"]
    overrides += ["data.num_workers=2", "data.cache_images=false", "train.eval_every=3"]
    out_dir = tmp_path / "run"
    args = cli_args("captioner", out_dir, overrides, resume=False)
    with start_cli("captioner", args, tmp_path / "group", own_group=True) as trainer:
        stop_with(signal.SIGTERM, trainer, out_dir, 4, group=True)


# --- a closed terminal --------------------------------------------------------------------------


class Terminal:
    """A pseudo-terminal that a training process takes as its controlling terminal, as one
    started from a shell (or over ssh) does. Closing it (`hang_up`) is what a closed terminal
    window or a lost ssh connection does: the kernel sends SIGHUP to the terminal's controlling
    process (here the trainer, its session's leader; else the shell, which sends it on to each
    of its jobs' process groups, DataLoader workers included, as the kernel does to the
    foreground group when the shell ends), and writes to the terminal fail (EIO)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.output = bytearray()
        self._closing = threading.Event()
        self._drain = threading.Thread(target=self._read, daemon=True)

    def start(self, task: str, args: list[str], log: Path, *, output: bool, nohup: bool = False):
        """``python -m <task>.train ARGS`` in a session of its own whose controlling terminal is
        this one; its output goes to the terminal (``output``) or to LOG.out and LOG.err. With
        ``nohup``, SIGHUP is ignored, as `nohup` leaves it."""

        def take_terminal() -> None:  # in the child, before exec
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            if nohup:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)

        log.parent.mkdir(parents=True, exist_ok=True)
        files = [log.with_suffix(suffix) for suffix in (".out", ".err")]
        for file in files:
            file.touch()
        out, err = (self.slave,) * 2 if output else (file.open("w") for file in files)
        process = subprocess.Popen(
            [sys.executable, "-m", f"{task}.train", *args],
            cwd=REPO,
            env=ENV,
            stdin=self.slave,
            stdout=out,
            stderr=err,
            preexec_fn=take_terminal,
        )
        self._drain.start()
        return Trainer(process, log, time.time())

    def _read(self) -> None:  # the terminal's window: what the process writes, read as it comes
        while not self._closing.is_set():
            if select.select([self.master], [], [], 0.05)[0]:
                self.output += os.read(self.master, 65536)

    def hang_up(self, trainer: Trainer, *, shell: bool = False) -> None:
        """Close the terminal; with ``shell``, send SIGHUP to the trainer's process group too,
        as the shell that started it would."""
        self._closing.set()
        self._drain.join()
        os.close(self.slave)
        os.close(self.master)
        if shell:
            os.killpg(trainer.pid, signal.SIGHUP)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="a hang-up is POSIX's")
def test_a_closed_terminal_stops_the_run_saved_and_its_resume_is_the_uninterrupted_run(
    tmp_path,
):
    """Over ssh, a lost connection closes the terminal of a run started without nohup or tmux:
    the process was killed by the hang-up, losing everything since its last checkpoint (up to
    `train.checkpoint_every_s`, ten minutes). Now it stops as for SIGTERM, last.pt saved at the
    step it had reached, with status 129, though no one is left to read its line; and after the
    hang-up its writes to the closed terminal (EIO) fail quietly instead of ending it."""
    base = ["model.dropout=0.2", "train.lr_decay_steps=60", "train.log_every=1"]
    base += ["train.eval_every=5"]
    out_dir = tmp_path / "run"
    terminal = Terminal()
    args = cli_args("char_lm", out_dir, [*base, "train.max_steps=1_000_000"], resume=False)
    with terminal.start("char_lm", args, tmp_path / "ssh", output=True) as trainer:
        assert trainer.wait_for_step(out_dir / "metrics.jsonl", 6)
        terminal.hang_up(trainer)
        assert trainer.wait(timeout=120) == 128 + signal.SIGHUP
    assert b"step 5: train loss" in terminal.output  # it was writing to the terminal
    stopped = load_checkpoint(out_dir / "last.pt")["step"]
    logged = max(r["step"] for r in read_metrics(out_dir / "metrics.jsonl"))
    assert stopped == logged > 6  # saved where it was, not at its last evaluation (5)

    end = stopped + 10
    cfg = load_config(CharLMConfig, CONFIGS["char_lm"], [*base, f"train.max_steps={end}"])
    assert char_lm_train.train(cfg, out_dir, resume=True, quiet=True)["steps"] == end
    train_in_process("char_lm", tmp_path / "reference", [*base, f"train.max_steps={end}"])
    assert_same_run(out_dir, tmp_path / "reference")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="a hang-up is POSIX's")
def test_a_closed_terminal_leaves_the_stop_to_the_main_process_and_says_it(
    scenes_annotations, tmp_path
):
    """`train ... > log 2>&1` in a terminal that closes: the line goes to the log and names the
    hang-up and what keeps a run going. The hang-up reaches the DataLoader workers too (the
    terminal's whole foreground group): they leave it to the main process, as for a group's
    SIGTERM (they were killed by it, and the main process failed mid-step with a traceback)."""
    overrides = [*task_overrides("captioner", scenes_annotations), "train.max_steps=1_000_000"]
    overrides += ["data.num_workers=2", "data.cache_images=false", "train.eval_every=3"]
    out_dir = tmp_path / "run"
    terminal = Terminal()
    args = cli_args("captioner", out_dir, overrides, resume=False)
    with terminal.start("captioner", args, tmp_path / "log", output=False) as trainer:
        assert trainer.wait_for_step(out_dir / "metrics.jsonl", 5), trainer.stderr()
        terminal.hang_up(trainer, shell=True)
        said = "SIGHUP (its terminal was closed; nohup, tmux or screen keep a run going)"
        stopped_step(said, trainer, out_dir, 4)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="a hang-up is POSIX's")
def test_under_nohup_a_closed_terminal_leaves_the_run_going_unheard(tmp_path):
    """With SIGHUP ignored (`nohup`, or a shell's `disown` with `huponexit` off) the run goes on
    to its end as though nothing happened, its output on the closed terminal dropped (writes
    failed with EIO: a traceback that ended the run)."""
    overrides = ["train.max_steps=60", "train.log_every=1", "train.eval_every=20"]
    out_dir = tmp_path / "run"
    terminal = Terminal()
    args = cli_args("char_lm", out_dir, overrides, resume=False)
    with terminal.start("char_lm", args, tmp_path / "nohup", output=True, nohup=True) as trainer:
        assert trainer.wait_for_step(out_dir / "metrics.jsonl", 3)
        terminal.hang_up(trainer)
        assert trainer.wait(timeout=120) == 0
    train_in_process("char_lm", tmp_path / "reference", overrides)
    assert_same_run(out_dir, tmp_path / "reference")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="a pseudo-terminal is POSIX's")
def test_commands_whose_terminal_closed_with_no_hang_up_go_on_unheard(scenes_annotations, tmp_path):
    """A command put in the background and `disown`ed, its terminal then closed: no hang-up
    reaches it, and its writes to the terminal fail with EIO. `caption` and `sample` ended at their
    first line with a traceback and status 1, `caption --csv` without its CSV; now they go on and
    end as they would have, as a training run does. Reading their output from a file gives the
    reference: the same CSV."""
    images = [str(path) for path in sorted((scenes_annotations.parent / "images").iterdir())[:4]]
    caption = [sys.executable, "-m", "captioner.caption", "--checkpoint"]
    caption += [str(REPO / "models" / "scenes_captioner.pt"), *images, "--csv"]
    sample = [sys.executable, "-m", "char_lm.sample", "--checkpoint"]
    sample += [str(REPO / "models" / "shakespeare_char.pt"), "--length", "40", "--seed", "3"]
    reference = [*caption[3:], str(tmp_path / "reference.csv")]  # in this process, to a capture
    assert run_cli(importlib.import_module("captioner.caption").main, reference) == 0
    streams_of = ("stdout", "stderr")
    primary, secondary = os.openpty()
    os.close(primary)  # closed before they start: each of their writes to it fails
    try:
        for command, streams in [
            ([*caption, str(tmp_path / "closed.csv")], ("stdout", "stderr")),
            ([*caption, str(tmp_path / "closed_err.csv")], ("stderr",)),
            (sample, ("stdout",)),
        ]:
            ended = subprocess.run(
                command,
                cwd=REPO,
                env=ENV,
                stdin=subprocess.DEVNULL,
                timeout=120,
                **{name: secondary if name in streams else subprocess.PIPE for name in streams_of},
            )
            assert ended.returncode == 0, (command, ended.stderr)
            assert not ended.stderr  # where not on the terminal: no traceback, no error line
            with pytest.raises(OSError) as failed:  # what they met: the terminal fails writes
                os.write(secondary, b"x")
            assert failed.value.errno == errno.EIO
    finally:
        os.close(secondary)
    expected = (tmp_path / "reference.csv").read_text()
    assert (tmp_path / "closed.csv").read_text() == expected
    assert (tmp_path / "closed_err.csv").read_text() == expected


# --- kill -9 ------------------------------------------------------------------------------------


KILL_RUNS = {
    # char_lm: 90 steps, a checkpoint every 2, lines every 3 (so resumed lines average steps of
    # two processes), evaluations every 10; kills after steps 6..60.
    "char_lm": (
        [
            "train.max_steps=90",
            "train.checkpoint_every=2",
            "train.log_every=3",
            "train.eval_every=10",
        ],
        range(6, 60),
    ),
    # captioner: 16 steps of 10 per epoch, a checkpoint every 2, lines every 3, an evaluation per
    # epoch; kills after steps 2..11.
    "captioner": (
        [
            "train.max_steps=16",
            "train.checkpoint_every=2",
            "train.log_every=3",
            "train.eval_every=0",
        ],
        range(2, 12),
    ),
}


@pytest.mark.parametrize("task", ["char_lm", "captioner"])
def test_kill_9_at_random_moments_then_resume_is_the_uninterrupted_run(
    task, scenes_annotations, tmp_path
):
    settings_, kill_after = KILL_RUNS[task]
    overrides = [
        *task_overrides(task, scenes_annotations),
        *settings_,
        "train.checkpoint_every_s=0",
    ]
    train_in_process(task, tmp_path / "reference", overrides)

    rng = random.Random(f"kill-9 {task}")
    targets = sorted(rng.sample(kill_after, 3))
    out_dir = tmp_path / "run"
    killed = []  # (the step the process had logged, the step of last.pt after the kill)
    for number, target in enumerate(targets):
        resume = (out_dir / "last.pt").exists()
        argv = [*cli_args(task, out_dir, overrides, resume=resume), "--quiet"]
        with start_child(task, argv, tmp_path / f"kill{number}") as trainer:
            if trainer.wait_for_step(out_dir / "metrics.jsonl", target):
                time.sleep(rng.uniform(0, 0.05))  # into the next step, write or line
                os.kill(trainer.pid, signal.SIGKILL)
            code = trainer.wait()
        if code == 0:
            break  # it finished before the kill
        assert code == -signal.SIGKILL, trainer.stderr()
        killed.append((target, load_checkpoint(out_dir / "last.pt")["step"]))
    assert len(killed) >= 2, killed  # the kills found the run still training
    if code != 0:
        argv = [*cli_args(task, out_dir, overrides, resume=True), "--quiet"]
        with start_child(task, argv, tmp_path / "finish") as trainer:
            assert trainer.wait() == 0, trainer.stderr()
    assert_same_run(out_dir, tmp_path / "reference")
    assert not list(out_dir.glob(".*.tmp"))  # no torn temporary file stays behind


@pytest.mark.parametrize(
    "tear_at_step",
    [6, 5],  # a plain checkpoint; the first evaluation's last.pt, before its first best.pt
)
def test_kill_9_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, tear_at_step):
    # Checkpoints at steps 2, 4, 6, ...; evaluations (last.pt, then best.pt) at 5 and 10.
    overrides = [
        "model.dropout=0.2",
        "train.max_steps=12",
        "train.checkpoint_every=2",
        "train.eval_every=5",
        "train.log_every=1",
        "train.checkpoint_every_s=0",
    ]
    train_in_process("char_lm", tmp_path / "reference", overrides)
    out_dir = tmp_path / "run"
    argv = [*cli_args("char_lm", out_dir, overrides, resume=False), "--quiet"]
    with start_child("char_lm", argv, tmp_path / "torn", tear_at_step) as trainer:
        assert trainer.wait() == -signal.SIGKILL, trainer.stderr()

    # The torn bytes are in a temporary file that nothing reads; every checkpoint is whole.
    (half,) = out_dir.glob(".last.pt.*.tmp")
    assert half.stat().st_size > 0
    assert sorted(p.name for p in out_dir.glob("*.pt")) == (
        ["last.pt"] if tear_at_step == 5 else ["best.pt", "last.pt"]
    )
    previous = 5 if tear_at_step == 6 else 4  # the step-5 evaluation wrote both files
    assert load_checkpoint(out_dir / "last.pt")["step"] == previous
    if tear_at_step == 6:
        assert load_checkpoint(out_dir / "best.pt")["step"] == 5
    lines = read_metrics(out_dir / "metrics.jsonl")
    assert max(r["step"] for r in lines) == tear_at_step  # logged past the checkpoint

    # --resume continues from there and ends as the uninterrupted run; the torn file is gone.
    cfg = load_config(CharLMConfig, CONFIGS["char_lm"], overrides)
    summary = char_lm_train.train(cfg, out_dir, resume=True, quiet=True)
    assert summary["steps"] == 12
    assert_same_run(out_dir, tmp_path / "reference")
    assert not half.exists() and not list(out_dir.glob(".*.tmp"))
