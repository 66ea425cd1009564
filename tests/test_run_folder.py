"""A run folder holds one run: the guard, the lock and --overwrite (`recurrent.engine.Run`,
`recurrent.files.hold`), and files the system refuses (`recurrent.errors.run_cli`).

- While a training process lives, a second run started into its folder is refused with one line
  naming the holder; killed with SIGKILL, the holder's lock goes with it.
- A folder with any of a run's files (last.pt, best.pt, metrics.jsonl) is refused without
  --resume or --overwrite; --overwrite removes the old run's checkpoints with its metrics before
  the new run's first step, so a new run killed early never leaves the old checkpoints beside its
  metrics.
- An `OSError` about a path (no permission, no such folder, full disk) becomes one line and exit
  status 2 in every CLI, like any bad input; one without a path is a bug and still raises, unless
  the disk is full (a write names no file: stdout's, say). An atomic write that fails names the
  file it writes, not its temporary file, also when the library writing (torch.save) raised an
  error of its own; taking a run folder's lock on a full disk leaves no folder or .lock behind.
- Atomically written files get the mode a plain open() gives them, not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import importlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import char_lm.sample as char_lm_sample
import char_lm.train as char_lm_train
from recurrent import files
from recurrent.checkpoint import save_checkpoint
from recurrent.engine import MetricsLog, Run, RunSettings, StepResult
from recurrent.errors import (
    EXIT_USER_ERROR,
    SHOWN_PATH_CHARS,
    STOPPED,
    TRAINING_STOPPED,
    UserError,
    run_cli,
    signal_said,
)

REPO = Path(__file__).resolve().parents[1]
CHAR_TINY = REPO / "configs" / "char_lm" / "tiny.yaml"
SETTINGS = RunSettings(
    max_steps=2, warmup_steps=0, log_every=1, eval_every=0, checkpoint_every_s=0,
    device="cpu", precision="fp32",
)  # fmt: skip


class _NoData:
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _fit(run: Run, step, evaluate=None, total_steps: int = SETTINGS.max_steps) -> dict:
    """Fit a small linear model; ``evaluate`` (net -> scores) defaults to its training loss."""
    model = nn.Linear(3, 2)
    optimizer = run.optimizer([("model", model, 0.1)])
    run.restore(model, optimizer, _NoData())
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    return run.fit(
        model,
        optimizer,
        _NoData(),
        step=lambda net: step(net, x, y),
        evaluate=evaluate or (lambda net: {"loss": F.cross_entropy(net(x), y).item()}),
        score_key=lambda scores: (-scores["loss"],),
        total_steps=total_steps,
        unit="items/s",
        card={},
        extra=lambda: {"vocab": []},
    )


def _step(net, x, y) -> StepResult:
    return StepResult(F.cross_entropy(net(x), y), len(x))


def test_a_second_run_into_a_living_runs_folder_is_refused_until_the_first_is_killed(
    tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out), "--quiet", "--set"]
    first = subprocess.Popen(
        [sys.executable, "-m", "char_lm.train", *argv, "train.max_steps=0",
         "train.time_budget_s=120", "train.eval_every=0"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists():  # it trains: it holds the folder
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run never started training"
            time.sleep(0.2)
        second = [*argv[:-1], "--overwrite", "--set", "train.max_steps=2", "model.cell=gru"]
        code = run_cli(char_lm_train.main, second)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert err[0] == (
            f"error: {out} is in use by another training run (process {first.pid} on "
            f"{files.HOST}); wait for it to end or stop it, or choose another --out-dir"
        )
        first.send_signal(signal.SIGKILL)  # a kill leaves no lock behind
        first.wait(timeout=30)
        code = run_cli(char_lm_train.main, second)
        assert code == 0, capsys.readouterr().err
    finally:
        first.kill()
        first.wait(timeout=30)
    assert not (out / ".lock").exists()  # the second run ended: its lock file is gone
    assert torch.load(out / "last.pt", weights_only=True)["config"]["model"]["cell"] == "gru"


def test_resume_into_a_folder_held_by_a_run_that_has_no_last_pt_yet_names_that_run(
    tmp_path, capsys
):
    """Not "nothing to resume ... drop --resume", which would only meet the lock next."""
    folder = tmp_path / "run"
    code = ("import sys, time; from pathlib import Path; from recurrent import files; "
            "files.hold(Path(sys.argv[1]), SystemExit); print('held', flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["--config", str(CHAR_TINY), "--out-dir", str(folder), "--quiet", "--resume"]
        assert run_cli(char_lm_train.main, argv) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {folder} is in use by another training run (process {holder.pid} on "
            f"{files.HOST}); wait for it to end or stop it, or choose another --out-dir"
        )
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_the_lock_is_held_by_one_process_and_kept_when_it_starts_again(tmp_path):
    """In one process, a run started again into its own folder (a test, the app) keeps the lock;
    `release` gives it up, and a process that does not hold it may then take it."""
    folder = tmp_path / "run"
    files.hold(folder, UserError)
    files.hold(folder, UserError)  # the same process: no refusal
    assert files.holder(folder) is None  # nor another holder
    holder = [sys.executable, "-c", "import sys; from pathlib import Path; "
              "from recurrent import files; files.hold(Path(sys.argv[1]), SystemExit)", str(folder)]  # fmt: skip
    taken = subprocess.run(holder, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (
        taken.returncode == 1 and taken.stderr.strip() == f"process {os.getpid()} on {files.HOST}"
    )
    assert (folder / ".lock").read_text() == f"process {os.getpid()} on {files.HOST}\n"
    probe = [*holder[:2], holder[2].replace("files.hold(Path(sys.argv[1]), SystemExit)",
             "print(files.holder(Path(sys.argv[1])))"), str(folder)]  # fmt: skip
    asked = subprocess.run(probe, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert asked.stdout.strip() == f"process {os.getpid()} on {files.HOST}", asked.stderr
    files.release(folder)
    assert not folder.exists()  # hold made it, and it was left empty: gone with its .lock
    taken = subprocess.run(holder, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert taken.returncode == 0, taken.stderr


def test_release_removes_exactly_the_folders_hold_made_even_through_dot_dot(tmp_path):
    """hold("a/../b") creates a and b (mkdir follows the path as written): both go at release; a
    b that was there before stays (only what hold made, and only when empty)."""
    files.hold(tmp_path / "a" / ".." / "b", UserError)
    assert (tmp_path / "a").is_dir() and (tmp_path / "b" / ".lock").is_file()
    files.release(tmp_path / "a" / ".." / "b")
    assert sorted(tmp_path.iterdir()) == []
    (tmp_path / "b").mkdir()
    files.hold(tmp_path / "a" / ".." / "b", UserError)
    files.release(tmp_path / "a" / ".." / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and not any(
        (tmp_path / "b").iterdir()
    )


def test_a_refused_start_leaves_no_folder_and_a_held_one_no_lock_file(tmp_path):
    """A run that stops before writing anything (here: its text is missing) removes the folders
    it created; a run folder that existed keeps everything but the lock file."""
    new = tmp_path / "new" / "run"
    argv = [sys.executable, "-m", "char_lm.train", "--config", str(CHAR_TINY), "--quiet",
            "--set", f"data.path={tmp_path / 'missing.txt'}", "--out-dir"]  # fmt: skip
    refused = subprocess.run([*argv, str(new)], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "text file not found" in refused.stderr, refused.stderr
    assert sorted(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    (old / "features").mkdir(parents=True)
    refused = subprocess.run([*argv, str(old)], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert sorted(p.name for p in old.iterdir()) == ["features"]


@pytest.mark.parametrize(
    ("left", "how"),
    [
        ("last.pt", "pass --resume to continue it, --overwrite to replace it, or choose"),
        # no last.pt: --resume would find nothing to resume (it was offered)
        ("best.pt", "it has no last.pt to go on from: pass --overwrite to replace it (--init-from "
                    "{folder}/best.pt starts a run from its best weights), or choose"),
        ("metrics.jsonl", "it has no last.pt to go on from: pass --overwrite to replace it, or"),
    ],
)  # fmt: skip
def test_a_folder_with_any_file_of_a_run_is_not_replaced_silently(tmp_path, left, how):
    (tmp_path / left).write_bytes(b"the old run")
    with pytest.raises(UserError) as refused:
        Run(tmp_path, task="char_lm", settings=SETTINGS, config={}, quiet=True)
    said = f"{tmp_path} already holds a run ({left}); {how.format(folder=tmp_path)}"
    assert str(refused.value).startswith(said), str(refused.value)
    assert (tmp_path / left).read_bytes() == b"the old run"
    assert not (tmp_path / ".lock").exists()  # refused before anything was written


def test_overwrite_removes_the_old_runs_checkpoints_before_the_first_step(tmp_path):
    """A new run that dies at its first step leaves no checkpoint of the old run beside its
    metrics (the old run's files are kept until training starts)."""
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        (tmp_path / name).write_bytes(b"the old run")
    run = Run(tmp_path, task="char_lm", settings=SETTINGS, config={}, overwrite=True, quiet=True)
    assert (tmp_path / "last.pt").read_bytes() == b"the old run"  # not yet: nothing trained
    seen = []

    def dies(net, x, y):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _fit(run, dies)
    assert seen == [[".lock"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    files.release(tmp_path)
    summary = _fit(Run(tmp_path, task="char_lm", settings=SETTINGS, config={}, overwrite=True,
                       quiet=True), _step)  # fmt: skip
    assert summary["steps"] == 2 and (tmp_path / "best.pt").is_file()


class _Killed(BaseException):
    """A SIGKILL at that instant: nothing after it runs, no handler catches it."""


def test_an_overwrite_killed_as_it_begins_leaves_no_old_run_without_its_metrics(
    tmp_path, monkeypatch
):
    """--overwrite removed the old run's metrics.jsonl before its last.pt and best.pt: a kill in
    between left the old checkpoints without their metrics, and --resume auto then went on with
    the old run, its metrics.jsonl holding only the lines after the old step."""
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        (tmp_path / name).write_bytes(b"the old run")
    started = MetricsLog.__init__

    def killed_once_opened(self, *args, **kwargs) -> None:
        started(self, *args, **kwargs)
        raise _Killed

    monkeypatch.setattr(MetricsLog, "__init__", killed_once_opened)
    run = Run(tmp_path, task="char_lm", settings=SETTINGS, config={}, overwrite=True, quiet=True)
    with pytest.raises(_Killed):
        _fit(run, _step)
    files.release(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither run's files


def test_resume_auto_continues_a_run_with_a_last_pt_and_else_starts_one(tmp_path, capsys):
    """`--resume auto`: one command for a job's first start and its restarts (torchrun's
    --max-restarts, a requeued job), as Lightning's ``ckpt_path="last"``."""

    def run(**options) -> Run:
        return Run(tmp_path / "run", task="char_lm", settings=SETTINGS, config={}, quiet=True,
                   resume="auto", **options)  # fmt: skip

    donor = tmp_path / "donor"
    _fit(Run(donor, task="char_lm", settings=SETTINGS, config={}, quiet=True), _step)
    assert "--resume auto" not in capsys.readouterr().out  # a run started without it
    first = run(init_from=donor / "best.pt")  # nothing to resume: a new run, from --init-from
    assert first.payload is None and first.init_payload is not None
    assert first.init_path == donor / "best.pt"
    last = tmp_path / "run" / "last.pt"
    assert f"--resume auto: no {last} yet, so a new run" in capsys.readouterr().out
    _fit(first, _step)
    again = run(init_from=donor / "best.pt")  # its last.pt wins; --init-from is not read
    assert again.payload["progress"]["step"] == 2
    assert again.init_payload is None and again.init_path is None
    files.release(tmp_path / "run")
    # a run killed before its first checkpoint left its metrics alone: nothing to keep, replaced
    for name in ("last.pt", "best.pt"):
        (tmp_path / "run" / name).unlink()
    assert run().payload is None
    files.release(tmp_path / "run")
    # a best.pt without last.pt is a run's result: kept, not replaced
    (tmp_path / "run" / "best.pt").write_bytes(b"the old run")
    with pytest.raises(UserError, match=r"already holds a run \(best.pt, metrics.jsonl\)"):
        run()
    assert (tmp_path / "run" / "best.pt").read_bytes() == b"the old run"
    assert run(overwrite=True).payload is None  # unless --overwrite replaces it
    files.release(tmp_path / "run")


class _Killed(BaseException):
    """A kill -9 of the process, as far as the run can tell: nothing after it runs."""


def test_a_run_killed_between_its_two_checkpoint_writes_resumes_with_both(tmp_path, monkeypatch):
    """The first evaluation improves the best score and saves best.pt, then last.pt: a run killed
    between the two left best.pt without last.pt, which --resume auto refused ("already holds a
    run (best.pt, metrics.jsonl)"), and so did every restart torchrun made. last.pt is now
    written first, and the resume writes the best.pt its evaluation had chosen."""
    from recurrent import engine

    written = []

    def killed_after_the_first_write(payload, path):
        save_checkpoint(payload, path)
        written.append(Path(path).name)
        raise _Killed

    monkeypatch.setattr(engine, "save_checkpoint", killed_after_the_first_write)
    with pytest.raises(_Killed):
        _fit(Run(tmp_path, task="char_lm", settings=SETTINGS, config={}, quiet=True), _step)
    files.release(tmp_path)
    monkeypatch.undo()
    run = Run(tmp_path, task="char_lm", settings=SETTINGS, config={}, quiet=True, resume="auto")
    assert written == ["last.pt"] and run.payload is not None
    _fit(run, _step)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert best["progress"]["best_step"] == last["progress"]["best_step"] == best["step"]


def _fit_scored(run: Run, losses: list[float]) -> None:
    """`_fit` for one step per loss in ``losses``, each followed by an evaluation scoring it
    (the run's settings: `EVERY_STEP`)."""
    scored = iter(losses)

    def evaluate(net: nn.Module) -> dict[str, float]:
        time.sleep(0.02)  # each checkpoint a file system clock tick after the one before
        return {"loss": next(scored)}

    _fit(run, _step, evaluate=evaluate, total_steps=len(losses))


EVERY_STEP = dataclasses.replace(SETTINGS, eval_every=1)


def _best_step_after_resume(folder: Path) -> int:
    """Resume the run in ``folder`` (as far as `Run.restore`); the step of its best.pt then."""
    run = Run(folder, task="char_lm", settings=EVERY_STEP, config={}, quiet=True, resume=True)
    model = nn.Linear(3, 2)
    run.restore(model, run.optimizer([("model", model, 0.1)]), _NoData())
    files.release(folder)
    return torch.load(folder / "best.pt", weights_only=True)["step"]


def _killed_before_writing_step_2s_best_pt(folder: Path, monkeypatch) -> None:
    """A run whose evaluations at steps 1 and 2 each improve the best score, killed after step
    2's last.pt, before its best.pt."""
    from recurrent import engine

    written = []

    def killed_at_the_fourth_write(payload, path):
        if len(written) == 3:  # step 1's last.pt and best.pt, step 2's last.pt
            raise _Killed
        save_checkpoint(payload, path)
        written.append(Path(path).name)

    monkeypatch.setattr(engine, "save_checkpoint", killed_at_the_fourth_write)
    with pytest.raises(_Killed):
        _fit_scored(Run(folder, task="char_lm", settings=EVERY_STEP, config={}, quiet=True), [2, 1])
    monkeypatch.undo()
    files.release(folder)
    assert written == ["last.pt", "best.pt", "last.pt"]
    assert torch.load(folder / "best.pt", weights_only=True)["step"] == 1


def test_a_resume_writes_best_pt_only_where_its_evaluation_was_killed_before_writing_it(
    tmp_path, monkeypatch
):
    """A resume from a last.pt saved at an evaluation that did not improve the best score keeps
    best.pt, the earlier evaluation's; one from a last.pt saved at an evaluation that improved
    it, killed before writing best.pt, writes it over the earlier evaluation's best.pt."""
    worse = tmp_path / "worse"  # step 2 scores worse than step 1
    _fit_scored(Run(worse, task="char_lm", settings=EVERY_STEP, config={}, quiet=True), [1, 2])
    files.release(worse)
    assert _best_step_after_resume(worse) == 1
    _killed_before_writing_step_2s_best_pt(tmp_path / "better", monkeypatch)
    assert _best_step_after_resume(tmp_path / "better") == 2


def test_a_resume_writes_best_pt_also_where_the_clock_gave_it_last_pts_time(tmp_path, monkeypatch):
    """On a file system whose clock ticks coarsely (ext3 and HFS+ by the second, FAT by two), an
    earlier evaluation's best.pt and the last.pt of one killed before writing its best.pt can
    bear one time: best.pt is written all the same (it was kept: --resume auto and every torchrun
    restart left best.pt an earlier evaluation's, and the run's best score another's)."""
    _killed_before_writing_step_2s_best_pt(tmp_path, monkeypatch)
    one_tick = (tmp_path / "last.pt").stat().st_mtime_ns // 10**9 * 10**9
    for name in ("best.pt", "last.pt"):
        os.utime(tmp_path / name, ns=(one_tick, one_tick))
    assert _best_step_after_resume(tmp_path) == 2


def test_a_non_finite_loss_before_any_checkpoint_says_to_start_again(tmp_path):
    from recurrent.errors import RunStopped

    run = Run(tmp_path, task="char_lm", settings=SETTINGS, config={}, quiet=True)
    with pytest.raises(RunStopped) as stop:
        _fit(run, lambda net, x, y: StepResult(F.cross_entropy(net(x), y) * torch.nan, len(x)))
    assert str(stop.value) == (
        "the training loss became nan at step 1; nothing was saved after it, no checkpoint was "
        "written yet; lower train.lr or set train.grad_clip and start again (with --overwrite)"
    )


@pytest.mark.parametrize(
    "err, line",
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/runs/x/metrics.jsonl"),
            "cannot use /runs/x/metrics.jsonl: Permission denied",
        ),
        (
            OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"),
            "cannot use /a -> /b: Invalid cross-device link",
        ),
        (  # a deep second path, under SHOWN_PATH_CHARS, is shown whole as the first one is
            OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/" + "b" * 200),
            f"cannot use /a -> /{'b' * 200}: Invalid cross-device link",
        ),
    ],
)
def test_a_refused_path_is_one_line_and_exit_status_2(err, line, capsys):
    def main(argv):
        raise err

    assert run_cli(main, []) == EXIT_USER_ERROR == 2
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed.startswith(f"error: {line}; check that the path exists")


def test_a_path_too_long_for_the_system_is_shown_cut_and_said_to_be_shortened(tmp_path, capsys):
    """A --checkpoint or --out-dir of 100,000 characters (a file pasted where its path goes): the
    system refuses it, and the line quoted it whole, 100 kB, saying to check that it exists."""
    long = tmp_path / ("q" * 100_000)
    for argv in (["--checkpoint", str(long)], ["--config", str(CHAR_TINY), "--out-dir", str(long)]):
        main = char_lm_sample.main if argv[0] == "--checkpoint" else char_lm_train.main
        assert run_cli(main, argv) == EXIT_USER_ERROR
        (printed,) = capsys.readouterr().err.splitlines()
        start = f"{tmp_path}/{'q' * (SHOWN_PATH_CHARS - 25 - len(str(tmp_path)))}"
        assert printed == (
            f"error: cannot use {start}...{'q' * 8} ({len(str(long)):,} characters): File name too "
            "long; shorten it (a file or folder name of at most 255 bytes, a path of at most 4,096 "
            "on most systems)"
        )


@pytest.mark.parametrize(
    "err, line",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/runs/x/last.pt"),
            "the disk is full (writing /runs/x/last.pt): No space left on device",
        ),
        (  # a write names no file: a full disk is still the machine's state the user can change
            OSError(errno.ENOSPC, "No space left on device"),
            "the disk is full: No space left on device",
        ),
        (
            OSError(errno.EDQUOT, "Disk quota exceeded"),
            "the disk is full: Disk quota exceeded",
        ),
    ],
)
def test_a_full_disk_is_one_line_and_exit_status_2_with_or_without_a_path(err, line, capsys):
    def main(argv):
        raise err

    assert run_cli(main, []) == EXIT_USER_ERROR
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed == f"error: {line}; free space on it and run again"


def test_an_os_error_without_a_path_is_a_bug_and_raises():
    def main(argv):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        run_cli(main, [])


def test_the_cli_names_an_output_folder_it_cannot_create(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(blocker / "run"), "--quiet"]
    assert run_cli(char_lm_train.main, argv) == 2
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed.startswith(f"error: cannot use {blocker / 'run'}: Not a directory")


def test_the_cli_passes_resume_and_resume_auto_on_to_the_run(tmp_path, capsys):
    """`--resume` alone refuses a folder with nothing to resume; `--resume auto` refuses only a
    folder that holds a run without a last.pt (a best.pt is kept). Both refuse before the text
    is read (here there is none)."""
    argv = ["--config", str(CHAR_TINY), "--quiet", "--set", "data.path=none.txt", "--out-dir"]
    assert run_cli(char_lm_train.main, [*argv, str(tmp_path / "empty"), "--resume"]) == 2
    assert capsys.readouterr().err.startswith("error: nothing to resume: ")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "best.pt").write_bytes(b"a run's result")
    assert run_cli(char_lm_train.main, [*argv, str(tmp_path / "kept"), "--resume", "auto"]) == 2
    assert "error: " + str(tmp_path / "kept") + " already holds a run (best.pt)" in (
        capsys.readouterr().err
    )


def test_atomic_writes_get_the_mode_an_open_would_give(tmp_path):
    path = tmp_path / "card.json"
    files.atomic_write_text(path, "one")
    assert path.stat().st_mode & 0o777 == 0o666 & ~files.UMASK
    path.chmod(0o640)  # a mode the user chose survives the next write
    files.atomic_write_text(path, "two")
    assert path.stat().st_mode & 0o777 == 0o640 and path.read_text() == "two"


def _raises_a_full_disk(handle):
    handle.write(b"half")
    raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no name


def _carries_on(handle):
    """A library that swallows the failed write and goes on as if it had been made."""
    with contextlib.suppress(OSError):
        handle.write(bytes(100_000))


@pytest.mark.parametrize("write", [_raises_a_full_disk, _carries_on])
def test_a_full_disk_during_an_atomic_write_names_the_file_and_leaves_the_old_one(
    tmp_path, capsys, full_disk, write
):
    path = tmp_path / "last.pt"
    path.write_bytes(b"the old checkpoint")
    full_disk(40_000)

    def main(argv):
        files.atomic_write(path, write)

    assert run_cli(main, []) == 2
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed == (
        f"error: the disk is full (writing {path}): No space left on device; free space on it "
        "and run again"
    )
    assert path.read_bytes() == b"the old checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_a_checkpoint_that_fills_the_disk_is_one_line_and_the_previous_one_stays(
    tmp_path, capsys, full_disk, monkeypatch
):
    """torch.save meets the failed write and raises its own error, which says nothing of a disk:
    "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 18368 vs 18320"
    on a real full tmpfs, a traceback and exit status 1 before. (On Python 3.14 the file's own
    OSError comes through torch instead.)"""
    real_save, raised = torch.save, []

    def save(*args, **kwargs):
        try:
            return real_save(*args, **kwargs)
        except BaseException as err:
            raised.append(err)
            raise

    monkeypatch.setattr(torch, "save", save)
    path = tmp_path / "last.pt"
    save_checkpoint({"task": "char_lm", "model": {"weight": torch.ones(3)}}, path)
    full_disk(40_000)
    grown = {"task": "char_lm", "model": {"weight": torch.zeros(20_000)}}  # 80 kB: past the buffer
    assert run_cli(lambda argv: save_checkpoint(grown, path), []) == 2
    torchs_own = isinstance(raised[-1], RuntimeError) and "unexpected pos" in str(raised[-1])
    assert torchs_own or getattr(raised[-1], "errno", None) == errno.ENOSPC, raised
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed == (
        f"error: the disk is full (writing {path}): No space left on device; free space on it "
        "and run again"
    )
    assert torch.load(path, weights_only=True)["model"]["weight"].tolist() == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def fill_the_disk_at_the_holders_line(monkeypatch) -> None:
    """`hold`'s write of its holder into the lock file fails as on a full disk (no file name)."""
    real_write = os.write

    def write(fd, data):
        if data.startswith(b"process "):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_when_taking_the_lock_leaves_no_folder_and_no_lock(
    tmp_path, monkeypatch, capsys
):
    """`hold` writes its holder into .lock: on a full disk that write fails with no file name,
    after the folders and the .lock were made."""
    fill_the_disk_at_the_holders_line(monkeypatch)
    folder = tmp_path / "new" / "run"
    assert run_cli(lambda argv: files.hold(folder, UserError), []) == 2
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed.startswith(f"error: the disk is full (writing {folder / '.lock'}): No space")
    assert sorted(tmp_path.iterdir()) == [] and files._HELD == {}


def test_a_folder_that_cannot_be_made_leaves_none_of_the_folders_made_for_it(
    tmp_path, monkeypatch, capsys
):
    """A full disk as `hold` makes ``new/sub/run``: ``new`` and ``sub`` were made, ``run`` could
    not be; they go too."""
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "run":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    folder = tmp_path / "new" / "sub" / "run"
    assert run_cli(lambda argv: files.hold(folder, UserError), []) == 2
    assert capsys.readouterr().err.startswith(f"error: the disk is full (writing {folder}): ")
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_metrics_that_fill_the_disk_name_metrics_jsonl(tmp_path, capsys):
    log = MetricsLog(tmp_path, resumed_step=None, tensorboard=False, enabled=True)
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")  # every write: ENOSPC, with no name
    assert run_cli(lambda argv: log.write({"kind": "train", "step": 1, "loss": 1.0}), []) == 2
    assert capsys.readouterr().err.startswith(
        f"error: the disk is full (writing {tmp_path / 'metrics.jsonl'}): No space left on device"
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("buffering", [-1, 1])  # a file's blocks; line by line (PYTHONUNBUFFERED)
def test_stdout_to_a_full_disk_is_one_line(monkeypatch, capsys, buffering):
    """Either way the line names the standard output, which the system's error does not."""
    with open("/dev/full", "w", buffering=buffering) as full:  # every write: ENOSPC
        monkeypatch.setattr(sys, "stdout", full)
        assert run_cli(lambda argv: print("a result"), []) == 2
        full.flush()  # what it still held went to os.devnull: the exit's flush will not fail
    line = "the disk is full (writing the standard output): No space left on device"
    assert capsys.readouterr().err == f"error: {line}; free space on it and run again\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_command_whose_stdout_fills_the_disk_exits_2_with_no_flush_error_at_exit():
    """Without PYTHONUNBUFFERED, the interpreter's last flush of stdout at exit used to fail:
    "Exception ignored in: <_io.TextIOWrapper name='<stdout>'...>" and exit status 120."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    code = "import sys; from recurrent.errors import run_cli; sys.exit(run_cli(print, ['a']))"
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stderr) == (2, (
        "error: the disk is full (writing the standard output): No space left on device; free "
        "space on it and run again\n"
    ))  # fmt: skip


def test_sigterm_before_training_is_one_stopped_line_and_status_143(capsys):
    """SIGTERM while a command sets up (filling the feature cache, say) used to kill it with no
    word; the training loop's own handler (tests/test_crash_safety.py) is unaffected."""
    before = signal.getsignal(signal.SIGTERM)

    def main(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises here
        raise AssertionError("SIGTERM did not stop the command")

    assert run_cli(main, []) == 143
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed == f"stopped: SIGTERM; {STOPPED}"
    assert signal.getsignal(signal.SIGTERM) is before  # put back for whoever called run_cli


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="a hang-up is POSIX's")
@pytest.mark.parametrize("nohup", [False, True])
def test_a_hang_up_stops_a_command_in_one_line_unless_nohup_ignores_it(nohup, capsys):
    """A closed terminal (a lost ssh connection) stops a command as SIGTERM does, naming the
    hang-up and what keeps a command going; under `nohup` (SIGHUP ignored) it goes on."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL)
    went_on = []

    def main(argv):
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.5)  # the handler raises here
        went_on.append(True)

    try:
        code = run_cli(main, [])
        assert signal.getsignal(signal.SIGHUP) is (signal.SIG_IGN if nohup else signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGHUP, before)
    said = capsys.readouterr().err
    if nohup:
        assert (code, said, went_on) == (0, "", [True])
    else:
        assert (code, went_on) == (129, [])
        assert said == (
            "stopped: SIGHUP (its terminal was closed; nohup, tmux or screen keep a run going); "
            f"{STOPPED}\n"
        )


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="a hang-up is POSIX's")
@pytest.mark.parametrize(
    ("environment", "keeps"),
    [
        ({}, "nohup, tmux or screen keep a run going"),
        ({"TORCHELASTIC_RUN_ID": "none"},  # a torchrun before torch 2.9: no flag for it
         "torchrun passes it on even under nohup: tmux or screen keep a run going"),
        ({"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP"},
         "torchrun passes it on even under nohup: tmux or screen keep a run going, or nohup "
         "torchrun --signals-to-handle=SIGTERM,SIGINT"),
        ({"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT"},
         "nohup, tmux or screen keep a run going"),  # the hang-up came from elsewhere
        ({"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGHUP"},
         "torchrun passes it on even under nohup: tmux or screen keep a run going, or nohup "
         "torchrun --signals-to-handle=SIGTERM"),  # its only signal: SIGTERM, torchrun's stop
        ({"TORCHELASTIC_RUN_ID": "none",  # torchrun strips each name
          "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGINT, SIGHUP ,SIGQUIT"},
         "torchrun passes it on even under nohup: tmux or screen keep a run going, or nohup "
         "torchrun --signals-to-handle=SIGINT,SIGQUIT"),
    ],
)  # fmt: skip
def test_a_hang_up_says_what_keeps_a_run_going_where_it_runs(environment, keeps, monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_SIGNALS_TO_HANDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert signal_said(signal.SIGHUP) == f"SIGHUP (its terminal was closed; {keeps})"
    assert signal_said(signal.SIGTERM) == "SIGTERM"


def test_an_ignored_sigterm_still_stops_a_command_only_an_ignored_hang_up_is_left(capsys):
    """`nohup` leaves SIGHUP ignored, and it stays so; a SIGTERM that starts ignored (as some
    launchers leave it) is taken all the same, as it always was."""
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert run_cli(_sigterm_in_main, []) == 143
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # put back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err == f"stopped: SIGTERM; {STOPPED}\n"


def _sigterm_in_main(argv):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)  # the handler raises here
    raise AssertionError("SIGTERM did not stop the command")


@pytest.mark.parametrize(
    ("module", "said"),
    [
        ("char_lm.train", TRAINING_STOPPED),
        ("captioner.train", f"{TRAINING_STOPPED} (a feature cache keeps what it filled)"),
        ("char_lm.sample", STOPPED),  # said that a rerun goes on, and of a feature cache
        ("char_lm.evaluate", STOPPED),
        ("captioner.evaluate", STOPPED),
    ],
)
def test_each_command_says_what_a_sigterm_before_its_end_leaves(module, said, monkeypatch, capsys):
    """A trainer stopped in its setup (before the loop's own handler) says that running it again
    goes on; a command that writes in one go, only that nothing is half-written."""
    command = importlib.import_module(module)
    monkeypatch.setattr(command, "main", _sigterm_in_main)
    with pytest.raises(SystemExit) as ended:
        command.cli()
    assert ended.value.code == 143
    assert capsys.readouterr().err == f"stopped: SIGTERM; {said}\n"


def test_sigterm_as_a_command_ends_leaves_it_its_own_line_and_status(monkeypatch, capsys):
    """torchrun's agent stops the other processes when one fails: its SIGTERM reached a process
    as it said that it had lost contact with the failed one (or as it put the handler back), and
    escaped as a worker traceback ("[rank0]: ... RunStopped: SIGTERM")."""
    from recurrent import errors

    say = errors.say

    def say_under_sigterm(line: str, **kwargs) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs as this call returns
        say(line, **kwargs)

    monkeypatch.setattr(errors, "say", say_under_sigterm)

    def main(argv):
        raise UserError("lost contact")

    assert run_cli(main, []) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: lost contact\n"


def test_a_start_refused_in_process_gives_the_folder_back_at_the_commands_end(tmp_path, capsys):
    """`run_cli` releases what a run that raised still holds (the app and the tests call main in
    one process, where no process end does it): the folders it made go, an old one loses only
    its .lock, and the next start into it is not refused as "in use"."""
    argv = ["--config", str(CHAR_TINY), "--quiet", "--set",
            f"data.path={tmp_path / 'missing.txt'}", "--out-dir"]  # fmt: skip
    new, old = tmp_path / "new" / "run", tmp_path / "old"
    (old / "features").mkdir(parents=True)
    try:
        for folder in (new, old):
            assert run_cli(char_lm_train.main, [*argv, str(folder)]) == 2
            assert "text file not found" in capsys.readouterr().err
            assert files._HELD == {}
        assert sorted(tmp_path.iterdir()) == [old]
        assert sorted(p.name for p in old.iterdir()) == ["features"]
    finally:
        files.release_all()


def test_the_lock_file_names_only_its_holder(tmp_path):
    """A .lock left by a process gone (a longer line: another host, a larger pid) is overwritten
    whole, not just its start."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("process 4194304 on a-much-longer-host-name.example.org\n")
    files.hold(folder, UserError)
    try:
        assert (folder / ".lock").read_text() == f"process {os.getpid()} on {files.HOST}\n"
    finally:
        files.release(folder)


@pytest.mark.parametrize("umask", [0o002, 0o027, 0o077], ids=oct)
def test_the_lock_file_gets_the_mode_an_open_would_give(tmp_path, umask):
    previous = os.umask(umask)
    try:
        files.hold(tmp_path / "run", UserError)
    finally:
        os.umask(previous)
    try:
        assert (tmp_path / "run" / ".lock").stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        files.release(tmp_path / "run")


@pytest.mark.parametrize("meanwhile", ["removed", "replaced"])
def test_a_lock_file_removed_before_it_was_locked_is_not_the_one_held(
    tmp_path, monkeypatch, meanwhile
):
    """Between `hold`'s open and its flock the holder may release: remove the .lock (and another
    process create a new one). The lock taken must be on the folder's .lock as it is now, or a
    second run would lock the new file beside the first."""
    folder = tmp_path / "run"
    lock = folder / ".lock"
    real_flock, calls = fcntl.flock, []

    def flock(fd, operation):
        calls.append(fd)
        if len(calls) == 1:  # the holder lets go of the file just opened
            lock.unlink()
            if meanwhile == "replaced":
                lock.write_text("process 1 on elsewhere\n")
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    files.hold(folder, UserError)
    try:
        assert lock.read_text() == f"process {os.getpid()} on {files.HOST}\n"
        held = files._HELD[folder.resolve() / ".lock"].fd
        assert os.fstat(held).st_ino == lock.stat().st_ino
    finally:
        files.release(folder)


def test_the_temporary_file_of_another_users_live_writer_is_kept(tmp_path, monkeypatch):
    """`os.kill(pid, 0)` raises PermissionError for a live process of another user: its write
    is still going on, so its temporary file stays; a pid that is gone (ProcessLookupError) is
    cleaned up."""
    live, gone = 4_000_001, 4_000_002  # above any pid_max: only the stand-in below answers
    real_kill = os.kill

    def kill(pid, signal_number):
        if pid == live:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        if pid == gone:
            raise ProcessLookupError(errno.ESRCH, "No such process")
        return real_kill(pid, signal_number)

    monkeypatch.setattr(os, "kill", kill)
    others = tmp_path / f".card.json.{files.HOST}-{live}.abc123.tmp"
    left = tmp_path / f".card.json.{files.HOST}-{gone}.def456.tmp"
    for path in (others, left):
        path.write_text("half")
    files.atomic_write_text(tmp_path / "card.json", "{}")
    assert others.exists() and not left.exists()


def test_the_temporary_file_of_a_write_is_hidden_and_named_for_its_writer(tmp_path):
    """While a file is written whole, its temporary file is `.NAME.HOST-PID.*.tmp`: hidden from
    readers that list the folder, and named so that the next write can tell whether its writer is
    gone (a visible name was never cleaned up after a kill)."""
    seen = []

    def write(handle):
        seen.extend(path.name for path in tmp_path.iterdir())
        handle.write(b"x")

    files.atomic_write(tmp_path / "out.txt", write)
    [name] = seen
    assert name.startswith(f".out.txt.{files.HOST}-{os.getpid()}.") and name.endswith(".tmp")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.txt"]


@pytest.fixture
def gone(monkeypatch) -> int:
    """A process id that `os.kill` says is gone (no such process)."""
    pid, real_kill = 4_000_002, os.kill

    def kill(target, signal_number):
        if target == pid:
            raise ProcessLookupError(errno.ESRCH, "No such process")
        return real_kill(target, signal_number)

    monkeypatch.setattr(os, "kill", kill)
    return pid


def test_a_gone_writers_temporary_file_is_cleaned_whatever_signs_the_name_holds(tmp_path, gone):
    """The next write's search for left-over temporary files takes the name literally: a name
    with glob's signs (``run[1].json``) matched `.run1.json.*` instead, and its own were kept."""
    left = tmp_path / f".run[1].json.{files.HOST}-{gone}.abc123.tmp"
    left.write_text("half")
    files.atomic_write_text(tmp_path / "run[1].json", "{}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run[1].json"]


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_a_new_file_written_whole_gets_the_mode_the_umask_allows(tmp_path, umask):
    """Under another umask than the usual 022 (a group's shared folder: 002; a private one:
    077), a new file gets 0o666 less it, as open() gives."""
    path = tmp_path / "card.json"
    code = (f"import os; os.umask({umask}); from recurrent import files; "
            f"files.atomic_write_text({str(path)!r}, 'x')")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_lock_file_that_cannot_be_created_leaves_none_of_the_folders_made_for_it(
    tmp_path, monkeypatch
):
    """The folders are made, then the .lock in them: where the system refuses the .lock (a full
    disk has no room for its entry), the folders made for it go too."""
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if Path(path).name == ".lock":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(OSError, match="No space left"):
        files.hold(tmp_path / "new" / "run", UserError)
    assert sorted(tmp_path.iterdir()) == [] and files._HELD == {}


def test_a_temporary_file_is_told_apart_from_its_name_when_the_name_holds_the_host(gone):
    """`abandoned` finds the writer after the last ``.HOST-`` of a temporary file's name, also
    where the file written has the host in its own name (the first one was taken for the
    writer's: a gone writer's file was kept as another machine's)."""
    name = f"shard.{files.HOST}-7.pt"
    assert files.abandoned(Path(f".{name}.{files.HOST}-{gone}.abc123.tmp"))
    assert not files.abandoned(Path(f".{name}.{files.HOST}-{os.getpid()}.abc123.tmp"))


def test_a_holder_that_has_not_named_itself_yet_is_another_process(tmp_path):
    """Between a holder's flock and its line in .lock the file is empty: the refusal and
    `holder` say "another process", not nothing."""
    folder = tmp_path / "run"
    folder.mkdir()
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: as another process's lock
        with pytest.raises(UserError) as refused:
            files.hold(folder, UserError)
        assert str(refused.value) == "another process"
        assert files.holder(folder) == "another process"
    finally:
        os.close(fd)
    assert files._HELD == {}


def test_another_machines_temporary_file_is_left_for_a_day(tmp_path):
    """On a shared disk another machine's writer cannot be asked whether it runs: its temporary
    file is kept for a day after its last change (a slow write of hours is not cut short)."""
    hours = {"two": 2, "twenty": 20, "twenty-five": 25}
    for name, age in hours.items():
        path = tmp_path / f".meta.json.other-host-{name}.abc123.tmp"
        path.write_text("half")
        then = time.time() - age * 3600
        os.utime(path, (then, then))
    files.atomic_write_text(tmp_path / "meta.json", "{}")
    kept = sorted(path.name for path in tmp_path.iterdir())
    assert kept == [
        ".meta.json.other-host-twenty.abc123.tmp",
        ".meta.json.other-host-two.abc123.tmp",
        "meta.json",
    ]


def test_a_file_written_whole_goes_through_a_link_and_never_replaces_a_special_file(tmp_path):
    """The rename of an atomic write replaced a symlink with a file (its target kept the old
    content), and a pipe or a device with a file (/dev/full as root; a reader of the pipe waited
    for ever): a link is written through, as open() writes, and a special file is refused."""
    target = tmp_path / "real" / "out.txt"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "out.txt"
    link.symlink_to(target)
    files.atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert not list(target.parent.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(files.NotARegularFile, match="not a regular file"):
        files.atomic_write_text(pipe, "x")
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    with pytest.raises(UserError, match="not a regular file"):
        files.atomic_write_text("/dev/null", "x")


def test_the_lock_of_one_file_is_its_own_and_goes_at_the_end(tmp_path):
    """hold(name=...) (caption --csv's lock, .OUT.csv.lock) locks a file of its own, not the
    folder's .lock a run takes there; another process is told who holds it; release_all gives it
    up, removing it and the folder hold made."""
    folder = tmp_path / "out"
    files.hold(folder, UserError, name=".c.csv.lock")
    assert sorted(path.name for path in folder.iterdir()) == [".c.csv.lock"]
    probe = [sys.executable, "-c", "import sys; from pathlib import Path; from recurrent import "
             "files; print(files.holder(Path(sys.argv[1]), '.c.csv.lock')); "
             "files.hold(Path(sys.argv[1]), SystemExit); print('run lock taken')",
             str(folder)]  # fmt: skip
    asked = subprocess.run(probe, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert asked.stdout.splitlines() == [
        f"process {os.getpid()} on {files.HOST}", "run lock taken"
    ], asked.stderr  # fmt: skip
    files.release_all()
    assert not folder.exists() and files._HELD == {}


def test_a_full_disk_when_taking_a_files_lock_leaves_no_lock(tmp_path, monkeypatch):
    """The lock of one file given up on a full disk goes with the folder made for it, as a
    run folder's lock does."""
    fill_the_disk_at_the_holders_line(monkeypatch)
    with pytest.raises(OSError, match="c.csv.lock"):
        files.hold(tmp_path / "new", UserError, name=".c.csv.lock")
    assert sorted(tmp_path.iterdir()) == [] and files._HELD == {}


def test_a_file_written_whole_over_a_folder_is_not_called_a_special_file(tmp_path):
    """A folder is left to the rename to refuse (IsADirectoryError naming it), not reported as
    "a pipe, a device or a socket"."""
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(OSError) as info:
        files.atomic_write_text(tmp_path / "out.csv", "x")
    assert not isinstance(info.value, files.NotARegularFile)
    assert (tmp_path / "out.csv").is_dir()


class _FailingOutput:
    """A standard output whose writes fail with EIO, on the descriptor of ``file``."""

    def __init__(self, file) -> None:
        self.file = file

    def write(self, text: str) -> int:
        raise OSError(errno.EIO, "Input/output error")

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.file.fileno()


def test_an_io_error_in_a_runs_line_is_dropped_from_a_terminal_and_raised_from_a_file(
    tmp_path, monkeypatch
):
    """EIO writing a run's line: from a terminal (a character device, as os.devnull is) it is
    a closed terminal, and the run goes on unheard (its SIGHUP stops it, unless nohup ignores
    it); from a file it is a failing disk, which must not be hidden."""
    run = Run(tmp_path / "run", task="char_lm", settings=SETTINGS, config={}, quiet=True)
    try:
        with open(os.devnull, "w") as terminal, (tmp_path / "log.txt").open("w") as disk:
            monkeypatch.setattr(sys, "stdout", _FailingOutput(terminal))
            run.log("step 5: train loss 1.0")
            assert not run.output_lost  # not a reader gone: the run goes on
            monkeypatch.setattr(sys, "stdout", _FailingOutput(disk))
            with pytest.raises(OSError) as failed:
                run.log("step 10: train loss 0.9")
            assert failed.value.errno == errno.EIO
    finally:
        files.release(run.out_dir)


def _reader_gone(
    argv: list[str], env: dict[str, str], *, after_lines: int = 0, stderr_too: bool = False
) -> tuple[int, str]:
    """Run ``python -m char_lm.train ARGV`` whose stdout's reader goes after `after_lines` lines
    (`train ... | head -N`; with ``stderr_too``, `train ... 2>&1 | head -N`); its exit status and
    stderr (none with ``stderr_too``)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "char_lm.train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr_too else subprocess.PIPE,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )
    try:
        lines = [process.stdout.readline() for _ in range(after_lines)]
        assert all(lines), lines
        process.stdout.close()  # `head -N` has its lines
        err = "" if stderr_too else process.stderr.read()
        process.wait(timeout=120)
    finally:
        process.kill()
        if not stderr_too:
            process.stderr.close()
    return process.returncode, err


def test_a_training_whose_stdout_reader_has_gone_stops_saved_and_says_so(tmp_path):
    """`train ... | head -1` (or a `tee` that died): the first log line written after the reader
    had gone raised BrokenPipeError, which `run_cli` takes for `sample ... | head`: the run
    stopped at once with exit status 0, no line and no checkpoint (its best evaluation unsaved).
    It stops now as for a signal: at its next step, last.pt saved, SIGPIPE's status 141."""
    out_dir = tmp_path / "run"
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--set",
            "train.max_steps=100000", "--set", "train.eval_every=50"]  # fmt: skip
    code, err = _reader_gone(argv, dict(os.environ), after_lines=1)
    assert code == 141, err
    (line,) = err.strip().splitlines()
    assert line.startswith("stopped: SIGPIPE (the standard output's reader has gone) at step ")
    assert line.endswith(f"{out_dir / 'last.pt'} is saved; run the same command with --resume "
                         "to continue")  # fmt: skip
    assert (out_dir / "last.pt").is_file() and (out_dir / "best.pt").is_file()


def test_a_training_whose_output_and_errors_reader_has_gone_stops_saved_with_sigpipes_status(
    tmp_path,
):
    """`train ... 2>&1 | head -1` (`2>&1 | tee log`, a `tee` that died): the run stopped saved,
    but its `stopped:` line, written to the same gone pipe, raised BrokenPipeError in turn: a
    traceback nobody could read and status 1, a crash to the script that ran it. Its line is
    dropped now (no one is left to read it) and the status is SIGPIPE's 141."""
    out_dir = tmp_path / "run"
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--set",
            "train.max_steps=100000", "--set", "train.eval_every=50"]  # fmt: skip
    code, _ = _reader_gone(argv, dict(os.environ), after_lines=1, stderr_too=True)
    assert code == 141
    assert torch.load(out_dir / "last.pt", weights_only=True)["step"] > 0


def test_an_unbuffered_training_whose_reader_has_gone_stops_saved_past_a_note(tmp_path):
    """`python -u -m char_lm.train ... --resume | head` (PYTHONUNBUFFERED, as in many containers)
    with another data.block_size: the first log line marked the output lost, but an unbuffered
    stdout had nothing left for a flush to fail on, so it was not dropped, and the walk's note
    raised BrokenPipeError: status 0, no line, nothing trained. It stops as the buffered one does."""
    out_dir = tmp_path / "run"
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "char_lm.train", *argv, "--set", "train.max_steps=4"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    resume = ["--resume", "--set", "train.max_steps=100000", "--set", "data.block_size=8"]
    code, err = _reader_gone([*argv, *resume], {**env, "PYTHONUNBUFFERED": "1"})
    assert code == 141, err
    (line,) = err.strip().splitlines()
    assert line.startswith("stopped: SIGPIPE (the standard output's reader has gone) at step ")
    assert torch.load(out_dir / "last.pt", weights_only=True)["step"] > 4


def test_a_buffered_training_whose_reader_has_gone_stops_at_the_next_line(tmp_path):
    """A standard output in a pipe is written in blocks (no PYTHONUNBUFFERED here): each log line
    is flushed, so the first one after the reader has gone stops the run, not the one that fills
    a block, or none: a short run ended with status 0 and every evaluation line lost unsaid."""
    out_dir = tmp_path / "run"
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--set",
            "train.max_steps=60", "--set", "train.eval_every=20"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    code, err = _reader_gone(argv, env)  # gone before the first line
    assert code == 141, err
    assert torch.load(out_dir / "last.pt", weights_only=True)["step"] < 20


def test_a_sigterm_with_the_output_also_gone_is_said_as_the_sigterm(
    tmp_path, monkeypatch, reader_gone
):
    """A scheduler's SIGTERM that lands as the output's reader goes (a job cancelled whole, its
    `tee` with it) is the stop's cause: the run says SIGTERM and ends with its 143, not SIGPIPE's."""
    from recurrent.errors import RunStopped

    monkeypatch.setattr(sys, "stdout", reader_gone)
    run = Run(tmp_path, task="char_lm", settings=SETTINGS, config={}, quiet=True)

    def step(net, x, y):
        run.log("a line nobody reads")  # the output is lost
        os.kill(os.getpid(), signal.SIGTERM)  # and the signal comes
        return StepResult(F.cross_entropy(net(x), y), len(x))

    with pytest.raises(RunStopped) as stop:
        _fit(run, step)
    assert run.output_lost and stop.value.exit_code == 143
    assert str(stop.value).startswith("SIGTERM at step 1: ")


# --- memory that runs out -------------------------------------------------------------------------


def _allocation_refused() -> None:
    """Ask the CPU allocator for 1 PiB: refused at once, with torch's real error."""
    torch.empty(1 << 50, dtype=torch.uint8)


def test_a_resumed_training_that_runs_out_of_memory_says_the_last_pt_it_went_on_from(
    tmp_path, monkeypatch, capsys
):
    """Python's own MemoryError at step 8 of a run that saved last.pt at step 7; then its resume
    at a step limit of 7, whose only work is the run's final evaluation (every run ends with
    one), which runs out too. Each says where and that last.pt holds step 7."""
    from char_lm.model import CharLM

    forward, calls = CharLM.forward, []

    def hungry_forward(self, *args, **kwargs):
        calls.append(self.training)
        if calls.count(True) == 8 or not self.training:
            bytearray(1 << 50)  # refused: MemoryError
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CharLM, "forward", hungry_forward)
    out_dir = tmp_path / "run"
    for max_steps, resume, said in (
        (20, [], "at step 8"),
        (7, ["--resume"], "in the evaluation at step 7"),
    ):
        argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--quiet", *resume, "--set",
                f"train.max_steps={max_steps}", "train.checkpoint_every=7", "train.eval_every=100"]  # fmt: skip
        monkeypatch.setattr(sys, "argv", ["char_lm.train", *argv])
        with pytest.raises(SystemExit) as ended:
            char_lm_train.cli()
        assert ended.value.code == EXIT_USER_ERROR
        assert capsys.readouterr().err == (
            f"error: the machine ran out of memory {said}; {char_lm_train.MEMORY}; "
            f"{out_dir / 'last.pt'} is as it was, at step 7: run again with --resume to go on "
            "from there\n"
        )
        assert torch.load(out_dir / "last.pt", weights_only=True)["step"] == 7


def test_a_run_started_with_overwrite_that_stops_says_resume_in_place_of_overwrite(
    tmp_path, monkeypatch, capsys
):
    """argparse refuses --resume beside --overwrite, so the line of a run started with
    --overwrite that runs out of memory says to put --resume in its place; and the command with
    --resume in place of --overwrite goes on from last.pt."""
    from char_lm.model import CharLM

    forward, calls = CharLM.forward, []

    def hungry_forward(self, *args, **kwargs):
        calls.append(self.training)
        if calls.count(True) == 8:
            bytearray(1 << 50)  # refused: MemoryError
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CharLM, "forward", hungry_forward)
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "metrics.jsonl").write_text("")  # an earlier run's, which --overwrite replaces
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--quiet", "--set",
            "train.max_steps=9", "train.checkpoint_every=7", "train.eval_every=100"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["char_lm.train", *argv, "--overwrite"])
    with pytest.raises(SystemExit) as ended:
        char_lm_train.cli()
    assert ended.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err.endswith(
        f"{out_dir / 'last.pt'} is as it was, at step 7: run again with --resume in place of "
        "--overwrite to go on from there\n"
    )
    monkeypatch.setattr(sys, "argv", ["char_lm.train", *argv, "--resume"])  # the advice
    with pytest.raises(SystemExit) as ended:
        char_lm_train.cli()
    assert ended.value.code == 0, capsys.readouterr().err
    assert torch.load(out_dir / "last.pt", weights_only=True)["step"] == 9


@pytest.mark.parametrize(
    ("where", "settings", "said", "kept"),
    [
        ("step", ["train.checkpoint_every=2"], "at step 5", 4),
        ("evaluation", ["train.checkpoint_every=2", "train.eval_every=3"],
         "in the evaluation at step 3", 2),
        ("step", [], "at step 5", None),
        ("step", ["train.eval_every=2"], "at step 5", 4),  # a step after an evaluation
    ],
)  # fmt: skip
def test_a_training_that_runs_out_of_memory_says_where_what_to_lower_and_what_it_kept(
    where, settings, said, kept, tmp_path, monkeypatch, capsys
):
    """On a GPU, a batch or a model too big is torch's OutOfMemoryError (on a CPU, an allocation
    the system refuses: torch's RuntimeError): a traceback that ended in allocator statistics,
    nothing saying which settings to lower or what was left. Now one line: what ran out and how
    much was asked for, the step or evaluation, the run's settings to lower, and its last.pt as
    it was (the step a --resume goes on from); status 2."""
    from char_lm.model import CharLM

    forward, calls = CharLM.forward, []

    def hungry_forward(self, *args, **kwargs):
        calls.append(self.training)
        if calls.count(True) == 5 if where == "step" else not self.training:
            _allocation_refused()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CharLM, "forward", hungry_forward)
    out_dir = tmp_path / "run"
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--quiet", "--set",
            "train.max_steps=20", *settings]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["char_lm.train", *argv])
    with pytest.raises(SystemExit) as ended:
        char_lm_train.cli()
    assert ended.value.code == EXIT_USER_ERROR
    ending = (
        f"{out_dir / 'last.pt'} is as it was, at step {kept}: run again with --resume to go on "
        "from there"
        if kept is not None
        else "nothing was saved yet"
    )
    assert capsys.readouterr().err == (
        f"error: the machine ran out of memory (it asked for 1.00 PiB more) {said}; "
        f"{char_lm_train.MEMORY}; {ending}\n"
    )
    if kept is None:
        assert not (out_dir / "last.pt").exists()
    else:
        assert torch.load(out_dir / "last.pt", weights_only=True)["step"] == kept


@pytest.mark.parametrize(("failing_write", "kept"), [(3, 5), (4, 10)])
def test_memory_that_runs_out_saving_a_checkpoint_names_the_save_and_the_step_last_pt_holds(
    failing_write, kept, tmp_path, monkeypatch, capsys
):
    """Step 10's evaluation improves: last.pt, then best.pt, is written (writes 3 and 4; step 5's
    were 1 and 2). Memory that ran out in the write of last.pt was said to be "at step 11", a
    step that never ran; in that of best.pt, with last.pt at step 10 already, "last.pt is as it
    was, at step 5"."""
    import recurrent.engine

    write, writes = recurrent.engine.save_checkpoint, []

    def hungry_write(payload, path):
        writes.append(path)
        if len(writes) == failing_write:
            _allocation_refused()
        return write(payload, path)

    monkeypatch.setattr(recurrent.engine, "save_checkpoint", hungry_write)
    out_dir = tmp_path / "run"
    argv = ["--config", str(CHAR_TINY), "--out-dir", str(out_dir), "--quiet", "--set",
            "train.max_steps=20", "train.eval_every=5"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["char_lm.train", *argv])
    with pytest.raises(SystemExit) as ended:
        char_lm_train.cli()
    assert ended.value.code == EXIT_USER_ERROR
    assert [path.name for path in writes] == ["last.pt", "best.pt", "last.pt", "best.pt"][
        :failing_write
    ]
    assert capsys.readouterr().err == (
        "error: the machine ran out of memory (it asked for 1.00 PiB more) saving the checkpoint "
        f"of step 10; {char_lm_train.MEMORY}; {out_dir / 'last.pt'} is as it was, at step {kept}: "
        "run again with --resume to go on from there\n"
    )
    assert torch.load(out_dir / "last.pt", weights_only=True)["step"] == kept


@pytest.mark.parametrize(
    ("command", "memory"),
    [
        ("captioner.caption", "lower --batch-size or --beam-size"),
        ("captioner.evaluate", "lower --batch-size or --beam-size"),
        ("captioner.train", None),  # its MEMORY
        ("char_lm.sample", "use a shorter prompt, or free memory on the machine"),
        ("char_lm.evaluate", "lower --streams or --block-size, or free memory on the machine"),
    ],
)
def test_each_command_that_runs_out_of_memory_says_what_to_lower(
    command, memory, monkeypatch, capsys
):
    module = importlib.import_module(command)
    monkeypatch.setattr(module, "main", lambda argv: _allocation_refused())
    with pytest.raises(SystemExit) as ended:
        module.cli()
    assert ended.value.code == EXIT_USER_ERROR
    memory = memory or module.MEMORY
    assert capsys.readouterr().err == (
        f"error: the machine ran out of memory (it asked for 1.00 PiB more); {memory}\n"
    )
