"""Multi-process training through a real ``torchrun`` with 2 gloo processes on the CPU.

Each launch is bounded by a timeout, so a broken rank fails the test instead of hanging CI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.launcher.api import LaunchConfig

from recurrent import distributed, errors
from recurrent.distributed import form_groups
from recurrent.errors import STOPPED, JobNotFormed, RunStopped, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TIMEOUT_S = 240


def kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` and every process below it: killing torchrun alone left its
    workers (each in a session of its own) behind, hung, for the rest of the suite."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # gone meanwhile
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    below = [pid]
    while below:
        process = below.pop()
        below += children.get(process, [])
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)


def job_env() -> dict[str, str]:
    """The environment of a launched job: one thread per process (the machine has two cores),
    output unbuffered (a process that hangs has said what it had)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def bounded(command: list[str], *, cwd: Path) -> subprocess.CompletedProcess:
    """``command`` run to its end, its output captured; at `TIMEOUT_S`, killed with every
    process it started (`kill_tree`)."""
    with subprocess.Popen(
        command, cwd=cwd, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            out, err = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def launch(args: list[str], *, processes: int, cwd: Path) -> subprocess.CompletedProcess:
    result = bounded((TORCHRUN if processes == 2 else [sys.executable]) + args, cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    # torch before 2.6 warned once per process from the object collectives (torch.load's default)
    assert "Warning" not in result.stderr, result.stderr[-4000:]
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def join_as(rank: int, port: int, monkeypatch: pytest.MonkeyPatch, local_rank: int = 0) -> None:
    """The environment torchrun gives ``rank`` of a two-process job on 127.0.0.1:``port``, its
    machine's process ``local_rank`` (the first, by default)."""
    job = {"RANK": rank, "WORLD_SIZE": 2, "LOCAL_RANK": local_rank, "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**job, "MASTER_PORT": port}.items():
        monkeypatch.setenv(name, str(value))


def serve_job_store(monkeypatch: pytest.MonkeyPatch) -> torch.distributed.TCPStore:
    """A store served as torchrun's agent serves its job's (TORCHELASTIC_USE_AGENT_STORE), for
    a process that `join_as` puts in a two-process job on it."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    return store


def launch_on_two_machines(args: list[str], *, cwd: Path, check: bool = True) -> list[Path]:
    """Run ``args`` as a job of two one-process "machines" on this one: two torchrun agents with
    ``--nnodes=2`` (node 0 holds rank 0), each in its own folder (``cwd/machine0``, ``machine1``)
    standing for its own disk: relative paths in ``args`` name different files on each. Each
    machine's output goes to its ``torchrun.log``; ``check``: both must succeed."""
    port = free_port()  # for the rendezvous
    machines = [cwd / "machine0", cwd / "machine1"]
    agents = []
    for node, folder in enumerate(machines):
        folder.mkdir(exist_ok=True)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}", *args,
        ]  # fmt: skip
        agents.append(
            subprocess.Popen(
                command,
                cwd=folder,
                env=job_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    try:
        outputs = [agent.communicate(timeout=TIMEOUT_S)[0] for agent in agents]
    except subprocess.TimeoutExpired:
        for agent in agents:
            if agent.poll() is None:
                kill_tree(agent.pid)
        raise
    finally:
        for agent in agents:
            agent.kill()
    for agent, output, folder in zip(agents, outputs, machines, strict=True):
        (folder / "torchrun.log").write_text(output)  # what the machine's terminal showed
        assert agent.returncode == 0 or not check, output[-4000:]
    return machines


def train_lines(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def assert_same_run(a: Path, b: Path, *, exact: bool, skip: tuple[str, ...] = ()) -> None:
    lines_a, lines_b = train_lines(a), train_lines(b)
    assert [r["step"] for r in lines_a] == [r["step"] for r in lines_b]
    for ra, rb in zip(lines_a, lines_b, strict=True):
        for key in ("loss", "grad_norm", "lr"):
            if exact:
                assert ra[key] == rb[key], (ra["step"], key)
            else:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5), (ra["step"], key)
    wa, wb = weights(a), weights(b)
    for name in wa:
        if name in skip:
            continue
        if exact:
            assert torch.equal(wa[name], wb[name]), name
        else:
            torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=1e-4, msg=name)


CHAR = ["-m", "char_lm.train", "--config", str(ROOT / "configs/char_lm/tiny.yaml"), "--quiet"]
CHAR_SET = [
    "--set",
    "model.dropout=0",
    "data.batch_size=4",
    "data.state_reset=0.3",  # the streams' random restarts do not depend on the layout either
    "train.eval_every=3",
    "train.log_every=1",
]


# char_lm.train with a DDP communication hook that notes each gradient all-reduce in calls.RANK
COUNTING_SYNCS = """
import os
from pathlib import Path
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from recurrent import engine
from char_lm import train

wrap = engine.Run._wrap

def counted(self, model):
    wrapped = wrap(self, model)
    calls = Path(f"calls.{os.environ['RANK']}")
    def hook(state, bucket):
        with calls.open("a") as file:
            file.write("all-reduce\\n")
        return allreduce_hook(None, bucket)
    wrapped.register_comm_hook(None, hook)
    return wrapped

engine.Run._wrap = counted
train.cli()  # as the command ends: recurrent.distributed.finish, not the interpreter's clean-up,
# which races gloo's threads (a rank aborted: "terminate called without an active exception")
"""


# char_lm.train whose rank 1 dies in the gradient all-reduce of step 5, the first time only
CRASHING = """
import os
from pathlib import Path
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from recurrent import engine
from char_lm import train

wrap = engine.Run._wrap

def crashing(self, model):
    wrapped = wrap(self, model)
    calls = []
    def hook(state, bucket):
        calls.append(bucket)
        first_time = os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"
        if len(calls) == 5 and os.environ["RANK"] == "1" and first_time:
            Path("crashed").write_text("step 5")
            os._exit(1)
        return allreduce_hook(None, bucket)
    wrapped.register_comm_hook(None, hook)
    return wrapped

engine.Run._wrap = crashing
train.cli()
"""


def test_char_lm_two_processes_match_one_and_resume_exactly(tmp_path):
    """Each process trains on 2 of the 4 streams; averaged gradients = the 4-stream batch's. Each
    optimizer step sums 2 batches (train.grad_accum_steps): the processes keep the first one's
    gradients to themselves (DDP's no_sync) and all-reduce once per optimizer step, as many
    exchanges as without accumulation (the tiny model's gradients fit one bucket), not twice as
    many."""
    common = [*CHAR[2:], *CHAR_SET, "train.grad_accum_steps=2", "train.lr_decay_steps=6"]
    straight = [*common, "train.max_steps=6", "--out-dir"]
    launch(["-m", "char_lm.train", *straight, "one"], processes=1, cwd=tmp_path)
    script = tmp_path / "counting_syncs.py"
    script.write_text(COUNTING_SYNCS)
    launch([str(script), *straight, "two"], processes=2, cwd=tmp_path)
    for rank in (0, 1):
        assert (tmp_path / f"calls.{rank}").read_text().count("all-reduce") == 6
    assert_same_run(tmp_path / "one", tmp_path / "two", exact=False)
    saved = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert len(saved["rng"]) == len(saved["data"]) == 2  # every rank's state is kept
    # each process draws its own dropout masks (seeded by rank), not copies of one another's
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    assert [d["streams"] for d in saved["data"]] == [2, 2]

    # torchrun restarts the job (--max-restarts) after a process crashed in the middle of step 5;
    # with --resume auto the restarted processes continue from last.pt (step 3), where they had
    # refused the run folder they had started: the straight run.
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING)
    args = ["--max-restarts=1", str(script), *straight, "restarted", "--resume", "auto"]
    launch(args, processes=2, cwd=tmp_path)
    assert (tmp_path / "crashed").read_text() == "step 5"
    assert_same_run(tmp_path / "two", tmp_path / "restarted", exact=True)

    # Resume under torchrun, with another number of processes in between: 2 processes to step 2,
    # 1 to step 4, 2 again to step 6 is the 6-step run (the streams' random restarts included).
    # Each process kept its share of the streams, and a resume with another number of processes
    # started the text again (a pass's first windows trained twice, the carried state dropped):
    # the shares are joined and split anew. The two-process runs are on two "machines" that
    # share no disk: rank 0 alone reads and writes the run folder, so it is on the first machine
    # only, and reads the checkpoint of --resume or --init-from there for both (the second
    # machine's process met "nothing to resume" and exited without a word).
    common = ["-m", "char_lm.train", *common]
    launch_on_two_machines([*common, "train.max_steps=2", "--out-dir", "run"], cwd=tmp_path)
    one_process = [*common, "train.max_steps=4", "--out-dir", "run", "--resume"]
    said = [launch(one_process, processes=1, cwd=tmp_path / "machine0").stdout]
    first, second = launch_on_two_machines(
        [*common, "train.max_steps=6", "--out-dir", "run", "--resume"], cwd=tmp_path
    )
    said += [(machine / "torchrun.log").read_text() for machine in (first, second)]
    assert not any("beginning of the text" in output for output in said)
    assert not (second / "run").exists()
    assert [output.count("resumed from") for output in said] == [1, 1, 0]  # rank 0 alone prints
    saved = torch.load(first / "run" / "last.pt", weights_only=True)
    assert [d["walked"] for d in saved["data"]] == [12, 12]  # 6 steps of 2 windows, not fewer
    assert_same_run(tmp_path / "one", first / "run", exact=False)
    # A new run from the first machine's best.pt (the second has no run/best.pt): its first loss,
    # taken before any update, is the trained weights' (a fresh model's is the straight run's).
    launch_on_two_machines(
        [*common, "train.max_steps=1", "--init-from", "run/best.pt", "--out-dir", "next"],
        cwd=tmp_path,
    )
    assert not (second / "next").exists()
    fresh, started = train_lines(tmp_path / "two")[0], train_lines(first / "next")[0]
    assert fresh["step"] == started["step"] == 1 and started["loss"] < fresh["loss"] - 0.02


def test_data_that_differs_between_the_machines_is_refused_in_one_line(tmp_path: Path):
    """A copy of the text on each machine, the second another version (the same characters, so
    the same vocabulary): the replicas trained on different text without a word (with another
    vocabulary, DDP's traceback on a parameter's shape). Every process now refuses it."""
    text = "the quick brown fox jumps over the lazy dog. " * 40
    for node, content in enumerate((text, text[::-1])):
        (tmp_path / f"machine{node}").mkdir()
        (tmp_path / f"machine{node}" / "text.txt").write_text(content)
    machines = launch_on_two_machines(
        [*CHAR, *CHAR_SET, "data.path=text.txt", "train.max_steps=1", "--out-dir", "run"],
        cwd=tmp_path,
        check=False,
    )
    said = [(machine / "torchrun.log").read_text() for machine in machines]
    assert "error: rank 1's copy of the training text (text.txt) differs from rank 0's" in said[0]
    assert "[rank 1] error: rank 1's copy of the training text" in said[1]
    assert not any("[rank0]:" in out or "[rank1]:" in out for out in said)  # no worker traceback


def test_a_process_that_fails_before_the_job_forms_stops_the_other_machines_at_once(tmp_path):
    """The config on the first machine only: the second machine's process fails before joining,
    and the first's waited to form the job for the whole 30-minute timeout (torchrun does not
    stop a process on another machine). It now stops at once, saying why the other stopped."""
    (tmp_path / "machine0").mkdir()
    shutil.copy(ROOT / "configs/char_lm/tiny.yaml", tmp_path / "machine0" / "tiny.yaml")
    start = time.monotonic()
    machines = launch_on_two_machines(
        ["-m", "char_lm.train", "--config", "tiny.yaml", "--quiet", "--out-dir", "run"],
        cwd=tmp_path,
        check=False,
    )
    assert time.monotonic() - start < 120
    first, second = [(machine / "torchrun.log").read_text() for machine in machines]
    missing = [line for line in second.splitlines() if "error:" in line]
    assert len(missing) == 1 and missing[0].startswith("[rank 1] error: "), second
    # its one line, before torchrun's report (no worker traceback)
    assert first.splitlines()[0] == (
        f'error: rank 1 of this torchrun job stopped before the job formed, saying "'
        f'{missing[0].removeprefix("[rank 1] ")}"; put that right on its machine and start the '
        "job again on every machine"
    ), first
    assert "[rank0]:" not in first


def test_a_process_waiting_for_its_job_to_form_stops_at_sigterm_and_tells_the_job(
    tmp_path, monkeypatch
):
    """Rank 0 of a two-process torchrun job whose rank 1 never comes, waiting to form the job
    (the store is this test's, as torchrun's agent serves it): SIGTERM stops it with one line
    (torch's joining waited in C++, deaf to it, for 30 minutes), and it tells the job why."""
    store = serve_job_store(monkeypatch)
    join_as(0, store.port, monkeypatch)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    waiting = subprocess.Popen(
        [sys.executable, *CHAR, "--out-dir", "r"], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while store.add("recurrent/attempt-0/joined", 0) < 1:
            assert waiting.poll() is None and time.monotonic() < deadline, "it never came to join"
            time.sleep(0.1)
        waiting.send_signal(signal.SIGTERM)
        _, stderr = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 128 + signal.SIGTERM, stderr
    (line,) = stderr.splitlines()
    assert line.startswith("stopped: SIGTERM; "), stderr
    assert store.check([key := "recurrent/attempt-0/failed"]), "it told nothing"
    assert store.get(key).decode() == f"0\t{line}"


@pytest.mark.parametrize(
    "raised, formed, told",
    [
        (UserError("a missing  config"), False, "1\terror: a missing config"),
        (RunStopped("SIGTERM", 143), False, "1\tstopped: SIGTERM"),
        (ValueError("a bug\nin two lines"), False, "1\tValueError: a bug (a traceback follows)"),
        (AssertionError(), False, "1\tAssertionError: no message (a traceback follows)"),
        (KeyboardInterrupt(), False, f"1\tstopped: interrupted; {STOPPED}"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "text.txt"),
            False,
            "1\terror: cannot use text.txt: No such file or directory; check that the path "
            "exists and is on a disk with free space that you may read and write",
        ),
        (JobNotFormed("rank 0 stopped before the job formed"), False, None),  # they know it
        (UserError("a bad image"), True, None),  # the job formed: nobody waits to form it
    ],
)
def test_a_process_that_stops_before_its_job_forms_tells_the_job_why(
    raised, formed, told, monkeypatch
):
    """What `run_cli` tells the store of the job (this test's, as torchrun's agent serves it)."""
    store = serve_job_store(monkeypatch)
    monkeypatch.setattr(errors, "_formed_job", lambda: object() if formed else None)

    def main(argv):
        raise raised

    key = "recurrent/attempt-0/failed"
    for rank in (1, 0):  # rank 0 then stops too: the first process to tell is the one quoted
        join_as(rank, store.port, monkeypatch)
        with contextlib.suppress(ValueError, AssertionError):  # a bug's traceback is raised
            run_cli(main, [])
        assert (store.get(key).decode() if store.check([key]) else None) == told


@pytest.mark.parametrize("ends", ["said", "sigterm", "timeout"])
def test_a_process_leaving_its_line_to_its_machines_first_waits_until_it_is_said(
    ends, monkeypatch, tmp_path, capfd
):
    """Rank 1, its machine's second process, stops before the job forms and leaves its line to
    rank 0, which meets the same error later (still starting) or quotes it: rank 1 exited at once,
    torchrun's agent stopped rank 0 before it said anything, and the machine's output held no
    line at all. Rank 1 now tells the job first, then waits until rank 0 has said its line (a
    file beside their torchrun error files), and says it itself at a SIGTERM (torchrun stopping
    the job) or after `SAID_TIMEOUT_S` (rank 0 waiting in torch's own joining, on torch 2.4)."""
    store = serve_job_store(monkeypatch)
    join_as(1, store.port, monkeypatch, local_rank=1)
    attempt = tmp_path / "attempt_0"  # torchrun's folders of the machine's processes' error files
    (attempt / "1").mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / "1" / "error.json"))
    monkeypatch.setattr(errors, "SAID_TIMEOUT_S", 1.0 if ends == "timeout" else 20.0)
    told_first: list[bool] = []

    def rank_0_later() -> None:
        time.sleep(0.5)
        told_first.append(store.check(["recurrent/attempt-0/failed"]))
        if ends == "said":
            (attempt / "crnn-said").touch()
        elif ends == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)

    def main(argv):
        raise UserError("the same config error")

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # should it come late
    try:
        threading.Thread(target=rank_0_later, daemon=True).start()
        start = time.monotonic()
        assert run_cli(main, []) == 2
        waited = time.monotonic() - start
    finally:
        time.sleep(max(0.0, 0.6 - (time.monotonic() - start)))  # past rank_0_later's signal
        signal.signal(signal.SIGTERM, previous)
    assert told_first == [True], "rank 1 waited before it told the job"
    assert (0.5 if ends != "timeout" else 1.0) <= waited < 10, waited
    said = "" if ends == "said" else "[rank 1] error: the same config error\n"
    assert capfd.readouterr().err == said  # rank 0's line, unless rank 0 did not say it
    assert store.get("recurrent/attempt-0/failed").decode() == "1\terror: the same config error"


def test_each_attempt_waits_for_its_own_processes_and_forms_under_its_own_keys(monkeypatch):
    """`setup`'s joining under torchrun, in a job that torchrun restarts after its two processes
    had joined (the store is this test's; the group that torch forms, which needs every process,
    is recorded instead): the earlier attempt's processes do not count as come, the group forms
    under this attempt's keys once both have come, and a process that stopped first is quoted."""
    store = serve_job_store(monkeypatch)
    join_as(0, store.port, monkeypatch)
    formed: list[dict] = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: formed.append(kw))
    store.add("recurrent/attempt-0/joined", 2)  # the first attempt formed, then one process died
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(JobNotFormed, match="did not all join it within"):
        distributed.setup("cpu", timeout_s=1)  # rank 1 of this attempt never came
    # (1 s: torch 2.4 counts the timeout of a store's connection in whole seconds)
    assert formed == []

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    store.add("recurrent/attempt-2/joined", 1)  # rank 0 came first, then rank 1 (on its machine)
    join_as(1, store.port, monkeypatch)
    distributed.setup("cpu", timeout_s=1)
    (group,) = formed
    assert (group["rank"], group["world_size"], group["backend"]) == (1, 2, "gloo")
    group["store"].set("rank 1's address", "here")
    assert store.check(["recurrent/attempt-2/group/rank 1's address"])

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    distributed.tell_failure("error: its config is missing")
    join_as(0, store.port, monkeypatch)
    with pytest.raises(JobNotFormed) as stopped:
        distributed.setup("cpu", timeout_s=5)
    assert str(stopped.value).startswith(
        'rank 1 of this torchrun job stopped before the job formed, saying "error: its config is '
        'missing"; '
    )
    assert len(formed) == 1


def test_a_process_that_cannot_reach_its_jobs_store_still_stops_at_once(monkeypatch, capfd):
    """A process that stops before its job formed, with the job's store gone (the first
    machine's torchrun ended): telling it gives up after `TELL_TIMEOUT_S`, not the job's 30
    minutes, and the process ends with its own line alone (torch's client printed a C++
    exception dump at each of its tries, on the terminal itself: capfd reads the descriptor)."""
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    join_as(1, free_port(), monkeypatch)  # nothing listens there
    monkeypatch.setattr(distributed, "TELL_TIMEOUT_S", 0.2)

    def main(argv):
        raise UserError("its config is missing")

    statuses: list[int] = []
    stopping = threading.Thread(target=lambda: statuses.append(run_cli(main, [])), daemon=True)
    stopping.start()
    stopping.join(timeout=30)
    assert statuses == [2], "it hung or raised telling a store that is gone"
    assert capfd.readouterr().err == "[rank 1] error: its config is missing\n"


def test_a_process_that_comes_to_join_a_store_that_has_gone_says_so_when_its_reach_ends(
    monkeypatch, capfd
):
    """A process that comes to join its job after the job's store has gone (the first machine's
    process failed at once and its torchrun ended): one line after `REACH_TIMEOUT_S`, where
    torch's client tried again for the job's whole timeout (30 minutes), deaf to SIGTERM, with a
    C++ exception dump at every try."""
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    join_as(1, free_port(), monkeypatch)  # nothing listens there
    monkeypatch.setattr(distributed, "REACH_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(JobNotFormed, match=r"^the torchrun job's rendezvous store closed before"):
        distributed.setup("cpu", timeout_s=30)
    assert time.monotonic() - start < 10
    assert capfd.readouterr().err == ""


def images_in(cache: Path) -> set[str]:
    """The image keys of a feature cache's complete shards (an index with its data file)."""
    shards = (path for path in cache.glob("*/shards/*.json") if path.with_suffix(".npy").is_file())
    return {key for shard in shards for key in json.loads(shard.read_text())["keys"]}


# captioner.train whose processes cannot tell which of them share the feature cache's folder
UNKNOWN_SHARING = """
from captioner import train
from recurrent.distributed import Distributed

Distributed.sharing = lambda self, folder: None
train.cli()
"""


def test_captioner_two_processes_match_one_with_a_feature_cache_shared_or_not(
    scenes_annotations: Path, tmp_path: Path
):
    def args(cache: str | Path) -> list[str]:
        return [
            "--config", str(ROOT / "configs/captioner/tiny.yaml"), "--quiet", "--set",
            f"data.annotations={scenes_annotations}", "train.max_steps=4", "train.eval_every=2",
            "train.log_every=1", "train.batch_size=8", "model.dropout=0",
            "model.finetune=frozen", "train.feature_cache=true", f"train.feature_cache_dir={cache}",
        ]  # fmt: skip

    def cached(folder: Path) -> dict[Path, int]:
        files = (path for path in folder.rglob("*") if path.is_file())
        return {path: path.stat().st_mtime_ns for path in files}

    features = tmp_path / "features"
    launch(
        ["-m", "captioner.train", *args(features), "--out-dir", "two"], processes=2, cwd=tmp_path
    )
    mtimes = cached(features)
    assert mtimes  # the two processes filled the (sharded) cache
    assert not any(path.name.startswith(".rank-") for path in mtimes)  # sharing's markers went
    launch(
        ["-m", "captioner.train", *args(features), "--out-dir", "one"], processes=1, cwd=tmp_path
    )
    assert cached(features) == mtimes  # filled once, reused
    one = tmp_path / "one"
    # The score bias before the attention softmax has an exactly zero gradient: Adam turns its
    # float noise into lr-sized steps, so it is left out of the comparison.
    skip = ("decoder.attention.score.bias",)
    assert_same_run(one, tmp_path / "two", exact=False, skip=skip)
    last = json.loads((one / "metrics.jsonl").read_text().splitlines()[-1])
    two = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == two["kind"] == "eval" and last["scores"] == two["scores"]

    # Two machines, each with its own disk: each fills its own folder whole (each process met
    # the other's images "missing" and called them undecodable), the same run.
    first, second = launch_on_two_machines(
        ["-m", "captioner.train", *args("features"), "--out-dir", "run"], cwd=tmp_path
    )
    everything = images_in(features)
    assert len(everything) == 22  # the fixture's 20 train and 2 val images
    assert images_in(first / "features") == images_in(second / "features") == everything
    assert_same_run(one, first / "run", exact=False, skip=skip)

    # Processes that cannot tell who shares the folder: each fills what it lacks, one at a time.
    driver = tmp_path / "unknown_sharing.py"
    driver.write_text(UNKNOWN_SHARING)
    fresh = tmp_path / "fresh"
    launch([str(driver), *args(fresh), "--out-dir", "unknown"], processes=2, cwd=tmp_path)
    assert images_in(fresh) == everything
    assert_same_run(one, tmp_path / "unknown", exact=False, skip=skip)


def test_an_image_that_decodes_on_one_machine_only_is_left_out_on_both(
    scenes_annotations: Path, tmp_path: Path
):
    """data.bad_images=skip with a feature cache on disks of their own, a train image damaged on
    the second machine only: each process left out what its own folder lacked, so the two trained
    on different item lists (other shuffles, other shares of the batch) with no word said. Every
    process now leaves out what any lacks, and rank 0 says so."""
    first, second = tmp_path / "machine0", tmp_path / "machine1"
    for machine in (first, second):
        shutil.copytree(scenes_annotations.parent, machine / "data")
    record = json.loads(scenes_annotations.read_text())["images"][1]
    assert record["split"] == "train"
    (second / "data" / record["filepath"] / record["filename"]).write_bytes(b"not an image")
    launch_on_two_machines(
        [
            "-m", "captioner.train", "--config", str(ROOT / "configs/captioner/tiny.yaml"),
            "--set", f"data.annotations=data/{scenes_annotations.name}",
            "data.bad_images=skip", "train.max_steps=1", "train.batch_size=8",
            "model.finetune=frozen", "train.feature_cache=true", "--out-dir", "run",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    said = (first / "torchrun.log").read_text()
    assert f"{record['filename']} does not decode on another machine" in said, said[-2000:]


def test_the_ranks_that_see_one_folder_form_groups_or_none():
    assert form_groups([[0, 1], [0, 1]])  # a shared file system
    assert form_groups([[0], [1]])  # a disk each
    assert form_groups([[0, 2], [1, 3], [0, 2], [1, 3]])
    assert not form_groups([[0, 1], [1]])  # rank 1 does not see rank 0's marker (yet)
    assert not form_groups([[0, 1, 2], [0, 1, 2], [1, 2]])
    assert not form_groups([[1], [1]])  # rank 0 did not see its own marker


def test_a_rank_that_dies_ends_the_job(tmp_path):
    """kill -9 one worker: torchrun stops the other and exits non-zero, well before the timeout."""
    args = [*CHAR, *CHAR_SET, "train.max_steps=100000", "train.eval_every=100000", "--out-dir", "r"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        TORCHRUN + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        metrics = tmp_path / "r" / "metrics.jsonl"
        workers = training_workers(
            job, lambda: metrics.is_file() and metrics.read_text().count("\n") >= 3, count=2
        )
        os.kill(int(workers[1]), signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            kill_tree(job.pid)  # its process group did not hold the workers
            job.wait()
    assert job.returncode != 0
    assert "char_lm.train FAILED" in stderr or "ChildFailedError" in stderr, stderr[-2000:]
    # the survivor says one line (or is stopped by torchrun's SIGTERM first), never a traceback:
    # the one traceback left is torchrun's own report
    assert "[rank0]:" not in stderr and stderr.count("Traceback (most recent call") == 1, stderr
    said = [line for line in stderr.splitlines() if line.startswith(("error:", "stopped:"))]
    assert len(said) <= 1, said
    assert not said or said[0].startswith("stopped: SIGTERM") or "lost contact" in said[0], said


def training_workers(job: subprocess.Popen, ready, count: int) -> list[str]:
    """The process ids of the ``count`` char_lm.train workers of torchrun ``job``, once
    ``ready()`` says training has started (within 120 s)."""
    deadline = time.monotonic() + 120
    while not ready():
        assert job.poll() is None and time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    workers = subprocess.run(
        ["pgrep", "-f", "-P", str(job.pid), "char_lm.train"], capture_output=True, text=True
    ).stdout.split()
    assert len(workers) == count, workers
    return workers


def _ignore_hang_up() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def start_logged(
    command: list[str], cwd: Path, *, piped: bool = False, **options
) -> subprocess.Popen:
    """``command`` started in CWD in a session of its own (`kill_tree` ends it), its output and
    errors in CWD/torchrun.log; with ``piped``, its output in a pipe (``job.stdout``)."""
    with (cwd / "torchrun.log").open("w") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=job_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if piped else log,
            stderr=log if piped else subprocess.STDOUT,
            start_new_session=True,
            **options,
        )


def hung_up_under_nohup(torchrun: list[str], args: list[str], cwd: Path) -> tuple[int, int]:
    """``nohup torchrun ARGS > CWD/torchrun.log 2>&1`` in a terminal that closes once training is
    2 steps past last.pt: the hang-up goes to torchrun's agent, as the shell sends it to its jobs
    (and the kernel to a terminal's controlling process). Return the job's exit status and the
    step that the hang-up found logged."""
    run = cwd / "r"
    last = run / "last.pt"
    start = torch.load(last, weights_only=True)["step"] if last.exists() else 0

    def logged() -> int:
        return max((r["step"] for r in train_lines(run)), default=0)

    job = start_logged([*torchrun, *args], cwd, preexec_fn=_ignore_hang_up)  # nohup's
    try:
        training_workers(job, lambda: (run / "metrics.jsonl").is_file() and logged() > start + 2, 2)
        found = logged()
        job.send_signal(signal.SIGHUP)
        return job.wait(timeout=120), found
    finally:
        if job.poll() is None:
            kill_tree(job.pid)
            job.wait()


def test_a_torchrun_job_whose_output_reader_has_gone_stops_as_sigpipe_in_every_process(tmp_path):
    """`torchrun ... | head -1`: rank 0's output is lost, and every process stops with it, saved.
    The others named it SIGTERM and exited with 143, so torchrun's report gave the job two causes;
    every process now says SIGPIPE's 141, and one line (rank 0's) says so."""
    command = [*TORCHRUN, *CHAR[:-1], *CHAR_SET, "train.max_steps=100000", "--out-dir", "r"]
    job = start_logged(command, tmp_path, piped=True)
    try:
        assert job.stdout.readline().startswith(b"data: ")
        job.stdout.close()  # `head -1` has its line
        job.wait(timeout=TIMEOUT_S)
    finally:
        if job.poll() is None:
            kill_tree(job.pid)
            job.wait()
    said = (tmp_path / "torchrun.log").read_text()
    # torchrun's report: every process it names exited 141 (torch 2.4's agent names only the
    # first to end, and ends the other itself)
    codes = re.findall(r"exitcode +: (-?\d+)", said)
    assert codes and set(codes) == {"141"}, said[-3000:]
    stops = [line for line in said.splitlines() if line.startswith(("stopped:", "[rank"))]
    assert len(stops) == 1, stops
    assert stops[0].startswith("stopped: SIGPIPE (the standard output's reader has gone) at step ")
    step = int(stops[0].split(" at step ")[1].split(":")[0])
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == step


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="a hang-up is POSIX's")
def test_a_hang_up_under_nohup_stops_a_torchrun_job_saying_what_keeps_it_going(tmp_path):
    """`nohup torchrun ...` in a terminal that closes: torchrun's agent handles SIGHUP though
    nohup left it ignored, and passes it on to its processes, which stopped, saved, with a line
    that said that nohup keeps a run going. It says what does under torchrun: the agent's
    ``--signals-to-handle`` without SIGHUP, with which the resumed job goes on to its end, the
    uninterrupted run."""
    common = [*CHAR, *CHAR_SET, "train.lr_decay_steps=300"]
    status, _ = hung_up_under_nohup(
        TORCHRUN, [*common, "train.max_steps=100000", "--out-dir", "r"], tmp_path
    )
    assert status != 0  # torchrun's own, 1, after its warnings and its traceback
    said = (tmp_path / "torchrun.log").read_text().splitlines()
    stops = [line for line in said if line.startswith(("stopped:", "error:", "[rank"))]
    keeps = "--signals-to-handle=SIGTERM,SIGINT,SIGQUIT"
    has_the_flag = "signals_to_handle" in {f.name for f in dataclasses.fields(LaunchConfig)}
    assert len(stops) == 1, said
    assert stops[0].startswith(
        "stopped: SIGHUP (its terminal was closed; torchrun passes it on even under nohup: tmux "
        + (f"or screen keep a run going, or nohup torchrun {keeps}) " if has_the_flag else
           "or screen keep a run going) ")  # torch before 2.9: no such flag
        + "at step "
    ), stops  # fmt: skip
    step = int(stops[0].split(" at step ")[1].split(":")[0])
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == step
    if not has_the_flag:
        return

    torchrun = [*TORCHRUN[:3], keeps, *TORCHRUN[3:]]
    args = [*common, "train.max_steps=300", "--out-dir", "r", "--resume"]
    status, found = hung_up_under_nohup(torchrun, args, tmp_path)
    assert status == 0 and found < 300, (tmp_path / "torchrun.log").read_text()[-4000:]
    launch([*common, "train.max_steps=300", "--out-dir", "one"], processes=1, cwd=tmp_path)
    assert_same_run(tmp_path / "one", tmp_path / "r", exact=False)


# char_lm.train whose rank 0 starts 2 s after rank 1
SLOW_RANK_0 = """
import os
import time
from char_lm import train

if os.environ["RANK"] == "0":
    time.sleep(2)
train.cli()
"""


def _fails(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = bounded(TORCHRUN + args, cwd=cwd)
    assert result.returncode != 0
    return result


def test_an_error_every_rank_meets_is_said_once_and_never_runs_into_another_line(tmp_path):
    """A config error (before the job forms) is said by rank 0 alone; an error after it (the
    batch does not split over the processes) once per rank, each on its own line; rank 0's
    refusal of its run folder once, and at once."""
    # (rank 0 comes to it 2 s after rank 1, whose exit made torchrun stop rank 0 before it said
    # it: the output held no error at all)
    (tmp_path / "slow_rank_0.py").write_text(SLOW_RANK_0)
    config_error = _fails(
        [str(tmp_path / "slow_rank_0.py"), *CHAR[2:], "--set", "train.lr=100", "--out-dir", "r"],
        tmp_path,
    )
    said = [line for line in config_error.stderr.splitlines() if "error: " in line]
    assert said == ["error: config key 'train.lr' must be in (0, 10], got 100.0"], said
    layout_error = _fails([*CHAR, "--set", "data.batch_size=3", "--out-dir", "r2"], tmp_path)
    said = sorted(line for line in layout_error.stderr.splitlines() if "error: " in line)
    message = "error: data.batch_size is 3, which does not split evenly over 2 processes"
    assert len(said) == 2 and said[0].startswith(f"[rank 1] {message}"), said
    assert said[1].startswith(message) and said[1].count("error:") == 1, said
    # a text too short for its windows: the batch size suggested splits over the processes (3,
    # which one process would be told, stopped the next run as above)
    (tmp_path / "short.txt").write_text("abcdefgh", encoding="utf-8")
    short = ["data.path=short.txt", "data.val_fraction=0", "data.batch_size=8"]
    short_error = _fails([*CHAR, "--set", *short, "data.block_size=2", "--out-dir", "r4"], tmp_path)
    said = [line for line in short_error.stderr.splitlines() if "error: " in line]
    assert said and all(line.endswith("(e.g. --set data.batch_size=2)") for line in said), said
    # Rank 0 alone checks the run folder: its refusal ends the job at once. Rank 1, waiting to
    # form the job in torch's C++, let torchrun's SIGTERM wait and was killed 30 s later.
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "metrics.jsonl").write_text("")
    start = time.monotonic()
    refused = _fails([*CHAR, "--out-dir", "r3"], tmp_path)
    assert time.monotonic() - start < 25
    said = [line for line in refused.stderr.splitlines() if "error: " in line]
    assert said == [
        "error: r3 already holds a run (metrics.jsonl); it has no last.pt to go on from: pass "
        "--overwrite to replace it, or choose another --out-dir"
    ], said


def test_captioner_skips_bad_images_under_torchrun_with_a_trainable_encoder(
    scenes_annotations: Path, tmp_path: Path
):
    """data.bad_images=skip with images read in the loop: one image per process and step, a third
    of the train images bad, so a process often has nothing for a step while the other has an
    image. The processes pass over such steps together (they fell out of step and hung), and the
    summary counts every bad file, whichever process met it. Its validation split is smaller than
    the job (1 image, 2 processes) and validates: one share is empty."""
    folder = tmp_path / "scenes"
    shutil.copytree(scenes_annotations.parent, folder)
    annotations = folder / scenes_annotations.name
    train = [e for e in json.loads(annotations.read_text())["images"] if e["split"] == "train"]
    bad = train[::3]
    for entry in bad:
        path = folder / entry.get("filepath", "") / entry["filename"]
        path.write_bytes(path.read_bytes()[:100])
    args = [
        "-m", "captioner.train", "--config", str(ROOT / "configs/captioner/tiny.yaml"),
        "--set", f"data.annotations={annotations}", "data.bad_images=skip", "train.batch_size=2",
        "train.captions_per_image=1", "train.epochs=1", "train.eval_every=0",
        "train.eval_max_images=1", "--out-dir", "run",
    ]  # fmt: skip
    done = launch(args, processes=2, cwd=tmp_path)
    logged = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [line["kind"] for line in logged if line["kind"] == "eval"] == ["eval"]
    steps = len(train_lines(tmp_path / "run"))
    assert 0 < steps < len(train) // 2  # steps where either process had only a bad image: none
    assert f"of {len(bad)} unreadable image file(s) (data.bad_images=skip)" in done.stdout


RANK_WEIGHTS_DRIVER = """
import torch
from char_lm import train
from recurrent import engine

real_fit = engine.Run.fit


def fit(self, model, *args, **kwargs):  # each process's own weights at the end
    summary = real_fit(self, model, *args, **kwargs)
    torch.save(model.state_dict(), self.out_dir / f"rank{self.dist.rank}.pt")
    return summary


engine.Run.fit = fit
train.cli()  # its end through recurrent.distributed.finish, as COUNTING_SYNCS's
"""


def test_a_time_budget_keeps_the_processes_replicas_identical(tmp_path):
    """With train.time_budget_s the cosine follows the clock: every process set its learning rate
    from its own clock, so the replicas drifted apart (1e-4 in weights after a few seconds), and
    only rank 0's were saved. The processes now agree on the clock after every step."""
    driver = tmp_path / "driver.py"
    driver.write_text(RANK_WEIGHTS_DRIVER)
    args = [str(driver), *CHAR[2:], *CHAR_SET, "train.max_steps=0", "train.time_budget_s=3",
            "--out-dir", "run"]  # fmt: skip
    launch(args, processes=2, cwd=tmp_path)
    ranks = [torch.load(tmp_path / "run" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(train_lines(tmp_path / "run")) > 20  # enough steps for the clocks to differ
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name


# char_lm.train whose step that a stopping signal finds takes 3 s: long enough for a second
# signal to come before it ends. Each process notes the first signal in signalled.RANK.
SLOW_TO_STOP = """
import os
import signal
import time
from pathlib import Path
from char_lm import train
from recurrent import engine

handle = engine._StopSignals._handle


def slow(self, signum, frame):
    first = self.received is None
    handle(self, signum, frame)
    if first:
        Path(f"signalled.{os.environ['RANK']}").write_text(signal.Signals(signum).name)
        time.sleep(3)


engine._StopSignals._handle = slow
train.cli()
"""


def test_a_second_signal_to_torchrun_leaves_the_stop_named_by_the_first(tmp_path):
    """A second Ctrl-C, or the shell's hang-up and then the kernel's as the shell exits, reaches
    torchrun's agent while it waits for its processes to stop; it sends them SIGTERM, and the
    line said "stopped: SIGTERM", status 143, of a run stopped by Ctrl-C or a closed terminal.
    The first signal names the stop; the run stops saved and its resume is the uninterrupted
    run."""
    signum = signal.SIGINT  # Ctrl-C (a hang-up goes the same way)
    script = tmp_path / "slow_to_stop.py"
    script.write_text(SLOW_TO_STOP)
    common = ["-m", "char_lm.train", *CHAR[2:], *CHAR_SET, "train.lr_decay_steps=20"]
    command = [*TORCHRUN, str(script), *common[2:], "train.max_steps=100000", "--out-dir", "r"]
    job = start_logged(command, tmp_path)
    try:
        metrics = tmp_path / "r" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and len(train_lines(tmp_path / "r")) > 2):
            assert job.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        job.send_signal(signum)
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"signalled.{rank}").exists() for rank in (0, 1)):
            assert time.monotonic() < deadline, "the signal never reached the processes"
            time.sleep(0.05)
        job.send_signal(signum)
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            kill_tree(job.pid)
            job.wait()
    said = (tmp_path / "torchrun.log").read_text().splitlines()
    assert "closing signal SIGTERM" in "\n".join(said)  # torchrun's answer to the second signal
    stops = [line for line in said if line.startswith(("stopped:", "error:", "[rank"))]
    assert len(stops) == 1 and stops[0].startswith(f"stopped: {signum.name}"), stops
    step = int(stops[0].split(" at step ")[1].split(":")[0])
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == step
    # the uninterrupted run goes a few steps past the stop, wherever the load let the stop land
    # (the cosine spans 20 steps in both, and stays at its floor after them)
    end = f"train.max_steps={step + 4}"
    launch([*common, end, "--out-dir", "r", "--resume"], processes=2, cwd=tmp_path)
    launch([*common, end, "--out-dir", "one"], processes=2, cwd=tmp_path)
    assert_same_run(tmp_path / "one", tmp_path / "r", exact=True)


def test_a_process_whose_peers_never_join_says_so_in_one_line(monkeypatch):
    """Rank 0 of a two-process job whose rank 1 never comes (it failed before joining, on another
    machine): torch's DistStoreError traceback at the timeout became one line."""
    port = free_port()
    join_as(0, port, monkeypatch)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"did not all join it within 2 s: one failed before"):
        distributed.setup("cpu", timeout_s=2)
    assert time.monotonic() - start < 60
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("agent_store", [False, True], ids=["env", "torchrun"])
def test_a_process_whose_job_store_closes_before_it_forms_says_so_in_one_line(
    agent_store, monkeypatch, capfd
):
    """Rank 1 waiting to form the job when rank 0 fails before joining (its run folder refused,
    its checkpoint unreadable) on the first machine, whose torchrun holds the job's store (the
    static rendezvous): the store closes, and torch's DistNetworkError traceback became one
    line. Under torchrun (the agent's store) that line comes alone, without the C++ exception
    dump that torch's client prints on the terminal itself when its store closes under it."""
    port = free_port()
    stores = [
        torch.distributed.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)
    ]
    join_as(1, port, monkeypatch)
    closer = threading.Timer(1.0, stores.clear)  # the first machine's torchrun ends
    if agent_store:  # it ends while the process waits between two looks at the store
        monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
        pause = time.sleep
        monkeypatch.setattr(distributed.time, "sleep", lambda s: (pause(s), stores.clear()))
    else:
        closer.start()
    try:
        with pytest.raises(UserError, match=r"rendezvous store closed before every process"):
            distributed.setup("cpu", timeout_s=60)
    finally:
        closer.cancel()
    assert not torch.distributed.is_initialized()
    if agent_store:
        assert capfd.readouterr().err == ""


def test_the_join_gate_looks_often_at_first_then_once_a_second(monkeypatch):
    """While the job forms, each process looks at the store every 0.1 s at first (a failure is
    told at once), then less often, down to once a second: a job of many processes waiting for a
    slow one must not flood the one store that serves them all. A real store, a simulated clock."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    clock = {"now": 0.0, "looks": []}

    def sleep(seconds: float) -> None:
        clock["now"] += seconds
        clock["looks"].append(clock["now"])
        if clock["now"] > 120:  # rank 1 fails two minutes on
            store.compare_set(distributed._attempt_key("failed"), "", "1\terror: no data here")

    monkeypatch.setattr(distributed.time, "sleep", sleep)
    monkeypatch.setattr(distributed.time, "monotonic", lambda: clock["now"])
    with pytest.raises(JobNotFormed, match=r'rank 1 of this .* saying "error: no data here"'):
        distributed._wait_for_everyone(store, distributed.Distributed(0, 2, 0), timeout_s=1800)
    looks = clock["looks"]
    assert looks[0] == pytest.approx(0.1)  # the first look comes promptly
    assert sum(look < 1 for look in looks) >= 5
    assert max(b - a for a, b in zip([0.0, *looks[:-1]], looks, strict=True)) <= 1.0  # at most 1 s
    assert len(looks) < 120 + 20  # about once a second after the first seconds
    assert looks[-1] - 120 <= 1.0  # the failure is noticed within a second


def test_stderr_held_while_joining_is_written_out_unless_the_join_failed(capfd):
    """What reaches the file descriptor of stderr while a process joins is held, and written out
    after all where the join went well; where it failed (torch's C++ exception dumps of a store
    that has gone), the process's one line replaces it."""
    with distributed._native_stderr_held():
        os.write(2, b"a native warning\n")
        print("a Python one", file=sys.stderr)
    assert sorted(capfd.readouterr().err.splitlines()) == ["a Python one", "a native warning"]
    with pytest.raises(JobNotFormed), distributed._native_stderr_held():
        os.write(2, b"[W TCPStore.cpp] frame #0: ...\n")
        raise JobNotFormed(distributed.STORE_CLOSED)
    assert capfd.readouterr().err == ""
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_a_worker_exits_without_leaving_its_process_group(monkeypatch, tmp_path):
    """`finish` runs the exit handlers and exits with the process group still formed: leaving it
    (`dist.destroy_process_group`) waits for gloo's threads while holding the GIL they may need,
    and under torch 2.4.1 a rank of a job that torchrun restarts hung there for good."""
    dist = torch.distributed
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        happened = []
        monkeypatch.setattr(dist, "destroy_process_group", lambda: happened.append("left"))
        monkeypatch.setattr(distributed.atexit, "_run_exitfuncs", lambda: happened.append("atexit"))
        monkeypatch.setattr(distributed.os, "_exit", lambda code: happened.append(f"exit {code}"))
        heartbeat = type("Heartbeat", (), {"end": lambda self: happened.append("heart ended")})
        monkeypatch.setattr(distributed, "_heartbeat", heartbeat())
        distributed.finish(3)
        # its watcher is told first: rank 0 may write its last checkpoints long after
        assert happened == ["heart ended", "atexit", "exit 3"] and dist.is_initialized()
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


def heartbeats(world_size: int, clock: dict) -> list[distributed.Heartbeat]:
    """The heartbeats of a job of ``world_size`` processes on a real store, on a simulated clock
    (``clock["now"]``), with a timeout of 60 s (a beat every 5 s); their threads are not
    started: `beat` plays them."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    return [
        distributed.Heartbeat(
            store, distributed.Distributed(rank, world_size, 0), 60.0, lambda: clock["now"]
        )
        for rank in range(world_size)
    ]


def beat(clock: dict, seconds: float, running: list[distributed.Heartbeat]) -> list[str]:
    """``seconds`` of beats, every 5 s, of the ``running`` processes (the others are stopped):
    the lines with which they end the job, if any."""
    lines = []
    for _ in range(round(seconds / 5)):
        clock["now"] += 5
        for heartbeat in running:
            line = heartbeat.look() or heartbeat.unanswered()
            if line is not None:
                lines.append((heartbeat.rank, line))
    return lines


def test_a_process_silent_for_the_heartbeat_timeout_ends_the_whole_job():
    """A frozen process, or one whose machine is lost, said nothing, and the others waited in
    their next collective for its 30-minute timeout. Each process watches the next rank's beats
    (rank + 1, around the ring); one silent for ``train.heartbeat_timeout_s`` is named, and every
    process that looks next ends with that line, whichever rank it watches."""
    clock = {"now": 0.0}
    zero, one, two = heartbeats(3, clock)
    assert [zero.watched, one.watched, two.watched] == [1, 2, 0]
    assert beat(clock, 3000, [one, two, zero]) == []  # 50 minutes: nobody is silent
    assert beat(clock, 60, [zero, two]) == []  # rank 1 froze: 60 s of silence so far
    [(rank, line)] = beat(clock, 5, [zero])  # 65 s: rank 0, its watcher, names it
    assert rank == 0 and line.startswith(
        "rank 1 of this torchrun job has given no sign of life for 60 s (the process frozen, or "
        "its machine lost or cut off), so the job ends here (train.heartbeat_timeout_s)"
    )
    assert "--resume auto" in line
    assert two.look() == line  # rank 2 watches rank 0, which beats, and ends with the same line
    assert one.look() == line  # and so does rank 1 when it goes on


def test_a_process_that_was_stopped_itself_does_not_blame_the_others():
    """A process stopped for longer than the timeout (SIGSTOP, a paused virtual machine, the
    whole job suspended) and then continued blamed the store or its watched rank for the silence
    it did not see: time counts only while a process runs."""
    clock = {"now": 0.0}
    zero, one = heartbeats(2, clock)
    assert beat(clock, 30, [zero, one]) == []
    clock["now"] += 600  # the whole job, and its store, stopped for ten minutes
    assert zero.unanswered() is None  # its timing thread wakes first
    assert beat(clock, 120, [zero, one]) == []
    assert beat(clock, 70, [zero]) != []  # a silence it sees is still named


def test_a_process_that_ended_its_command_is_not_waited_for():
    """At the end of a job the processes end one after the other (rank 0 writes the last
    checkpoints after the others are done): one that has ended its command has told its watcher,
    which does not take its silence for a failure."""
    clock = {"now": 0.0}
    zero, one = heartbeats(2, clock)
    assert beat(clock, 10, [zero, one]) == []
    one.start()
    one.end()  # its thread tells the store before the process goes on to exit
    assert one.store.check([distributed._attempt_key("heartbeat/ended-1")])
    assert beat(clock, 600, [zero]) == []  # ten minutes on, rank 0 still writing


def test_a_store_that_has_not_answered_for_the_heartbeat_timeout_ends_the_job():
    """The machine whose torchrun serves the job's store lost: `unanswered` names the store once
    no look has been answered for the timeout while the process ran (until then, a slow store is
    waited for)."""
    clock = {"now": 0.0}
    zero, one = heartbeats(2, clock)
    zero.where = " at 10.0.0.1:29500"
    assert beat(clock, 10, [zero, one]) == []
    for _ in range(12):  # 60 s of looks that get no answer, its other thread keeping the time
        clock["now"] += 5
        assert zero.unanswered() is None
    clock["now"] += 5
    assert zero.unanswered() == (
        "the torchrun job's store at 10.0.0.1:29500 has not answered for 60 s (what serves it on "
        "the first machine, torchrun or rank 0, frozen, lost or cut off), so the job ends here"
        + " (train.heartbeat_timeout_s); run the same command with --resume auto to go on from "
        "the run's last.pt, or to start again where it has none"
    )
    assert one.look() is None  # rank 1 beats
    assert zero.look() is None and zero.unanswered() is None  # the store answers again


def test_a_heartbeats_line_says_to_resume_in_place_of_overwrite_where_the_command_had_it(
    monkeypatch, tmp_path
):
    """argparse refuses --resume beside --overwrite: a job started with --overwrite that a
    silent process ended said to run the same command with --resume auto, which failed at once.
    Its line says to put --resume auto in place of --overwrite."""
    from recurrent.engine import Run, RunSettings

    asked, setup = [], distributed.setup

    def noted(*args, **kwargs):
        asked.append(kwargs["resume"])
        return setup(*args, **kwargs)

    monkeypatch.setattr(distributed, "setup", noted)
    settings = RunSettings(max_steps=1, device="cpu", precision="fp32")
    for overwrite in (False, True):
        Run(tmp_path / str(overwrite), task="char_lm", settings=settings, config={},
            overwrite=overwrite, quiet=True)  # fmt: skip
    assert asked == ["--resume auto", "--resume auto in place of --overwrite"]
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    clock = {"now": 0.0}
    heartbeat = distributed.Heartbeat(
        store, distributed.Distributed(0, 2, 0), 60.0, lambda: clock["now"], resume=asked[1]
    )
    for _ in range(13):  # 65 s of looks its store does not answer: the store's line says it too
        clock["now"] += 5
        unanswered = heartbeat.unanswered()
    advice = (
        "; run the same command with --resume auto in place of --overwrite to go on from the "
        "run's last.pt, or to start again where it has none"
    )
    assert heartbeat._silent(1).endswith(advice)
    assert unanswered is not None and unanswered.endswith(advice)


def test_a_heartbeat_ends_the_job_when_its_store_freezes(monkeypatch):
    """The real threads against a store served by another process, frozen with SIGSTOP (as its
    machine lost would leave it): a request to it never returns, and the thread that keeps the
    time ends the job at the timeout."""
    server = subprocess.Popen(
        [sys.executable, "-c", STORE_SERVER], stdout=subprocess.PIPE, text=True, env=job_env()
    )
    try:
        port = int(server.stdout.readline())
        store = torch.distributed.TCPStore("127.0.0.1", port, is_master=False)
        ended: list[str] = []
        done = threading.Event()
        monkeypatch.setattr(
            distributed, "end_job", lambda line, grace_s: (ended.append(line), done.set())
        )
        heartbeat = distributed.Heartbeat(store, distributed.Distributed(1, 2, 0), 1.0)
        os.kill(server.pid, signal.SIGSTOP)
        started = time.monotonic()
        heartbeat.start()
        assert done.wait(30), "the job was not ended"
        assert 1.0 <= time.monotonic() - started < 10
        assert len(ended) == 1 and ended[0].startswith("the torchrun job's store has not answered")
        heartbeat.ended.set()
    finally:
        server.kill()  # its SIGKILL also ends the request waiting on it
        server.wait()


STORE_SERVER = """
import time
import torch.distributed as dist

store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
print(store.port, flush=True)
time.sleep(600)
"""


def test_a_frozen_process_ends_its_torchrun_job_at_the_heartbeat_timeout(tmp_path):
    """SIGSTOP one worker of a real three-process torchrun job (a frozen process, or a machine
    that stops answering): the others end the job within seconds of the 3-second heartbeat
    timeout, not at the collective's 30 minutes, each with the line that names it (the third
    said "lost contact" when its watcher's process ended at once), and last.pt is whole."""
    args = [*CHAR, *CHAR_SET, "train.max_steps=100000", "train.eval_every=20"]
    args += ["--set", "data.batch_size=6", "--set", "train.heartbeat_timeout_s=3"]
    command = [*TORCHRUN[:-1], "--nproc_per_node=3", *args, "--out-dir", "r"]
    job = subprocess.Popen(
        command, cwd=tmp_path, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        workers = training_workers(job, (tmp_path / "r" / "last.pt").is_file, count=3)
        rank = {int(Path(f"/proc/{pid}/environ").read_bytes().split(b"RANK=")[1].split(b"\0")[0]):
                int(pid) for pid in workers}  # fmt: skip
        os.kill(rank[1], signal.SIGSTOP)
        stopped = time.monotonic()
        assert ended_within(rank[0], timeout_s=60) and ended_within(rank[2], timeout_s=30)
        waited = time.monotonic() - stopped
        os.kill(rank[1], signal.SIGKILL)  # its machine lost for good
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            kill_tree(job.pid)
            job.wait()
    assert 3 <= waited < 20, waited
    assert job.returncode != 0
    said = [line for line in stderr.splitlines() if line.startswith(("error:", "[rank"))]
    silent = "rank 1 of this torchrun job has given no sign of life for 3 s"
    assert len(said) == 2, stderr[-3000:]
    assert said[0].startswith(f"error: {silent}") or said[1].startswith(f"error: {silent}")
    assert any(line.startswith(f"[rank 2] error: {silent}") for line in said), said
    assert "[rank0]:" not in stderr and stderr.count("Traceback (most recent call") == 1, stderr
    payload = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert payload["step"] >= 20


def ended_within(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` (not this one's child) has ended within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(
    ("timeout_s", "period_s"), [(1.0, 0.1), (3.0, 0.3), (20.0, 2.0), (60.0, 5.0), (300.0, 5.0)]
)
def test_a_process_beats_every_tenth_of_its_timeout_from_a_tenth_of_a_second_to_five(
    timeout_s, period_s
):
    assert distributed.heartbeat_period(timeout_s) == pytest.approx(period_s)


def test_a_heartbeats_line_is_the_last_its_process_says(monkeypatch, tmp_path, capsys):
    """`end_job`: the line, then nothing more (the main thread's "lost contact" or torchrun's
    SIGTERM after it), what stdout held written out, the wait for the others to read the line,
    and the exit status of a lost peer."""
    for name in ("RANK", "LOCAL_RANK", "TORCHELASTIC_ERROR_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(errors, "_SAID_LAST", threading.Event())  # this test's own
    happened = []
    monkeypatch.setattr(distributed.time, "sleep", lambda s: happened.append(f"slept {s}"))
    monkeypatch.setattr(distributed.os, "_exit", lambda code: happened.append(f"exit {code}"))
    with open(tmp_path / "stdout", "w") as stdout, monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", stdout)  # redirected to a file: written in blocks
        print("step 20 loss 1.25")
        distributed.end_job("rank 1 of this torchrun job has given no sign of life", 7.5)
        assert (tmp_path / "stdout").read_text() == "step 20 loss 1.25\n"
    assert happened == ["slept 7.5", f"exit {errors.EXIT_LOST_PEER}"]
    errors.say("error: lost contact with another process of this torchrun job")
    errors.say("stopped: SIGTERM", job_wide=True, last=True)
    assert capsys.readouterr().err == (
        "error: rank 1 of this torchrun job has given no sign of life\n"
    )


def test_a_heartbeat_started_under_torchrun_names_its_store_and_can_connect_again(monkeypatch):
    """`_start_heartbeat`: the process's heartbeat (the one `finish` ends), on a connection of
    its own, naming the store's address in its line, and able to connect again."""
    connections = []
    monkeypatch.setattr(
        distributed, "_job_store", lambda timeout_s: connections.append(timeout_s) or object()
    )
    monkeypatch.setattr(distributed.Heartbeat, "start", lambda self: None)
    monkeypatch.setattr(distributed, "_heartbeat", None)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    resume = "--resume auto in place of --overwrite"  # the engine's, for a command with it
    distributed._start_heartbeat(distributed.Distributed(1, 2, 0), 3.0, resume)
    heartbeat = distributed._heartbeat
    assert heartbeat is not None and heartbeat.where == " at 10.0.0.1:29500"
    assert f"run the same command with {resume} to go on" in heartbeat._silent(0)
    assert heartbeat.reconnect is not None and heartbeat.reconnect() is not heartbeat.store
    assert len(connections) == 2


@pytest.mark.parametrize(
    ("heartbeat_timeout_s", "resume"),
    [(0.0, None), (3.0, None), (3.0, "--resume auto in place of --overwrite")],
)
def test_a_process_beats_once_its_job_has_formed_unless_its_timeout_is_0(
    heartbeat_timeout_s, resume, monkeypatch
):
    """`setup` under torchrun (the group that torch forms is not): the heartbeat starts with the
    config's timeout once the job has formed, its line advising ``resume`` (by default --resume
    auto); 0 turns it off."""
    store = serve_job_store(monkeypatch)
    join_as(1, store.port, monkeypatch)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    store.add("recurrent/attempt-0/joined", 1)  # rank 0 came first
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: None)
    started = []
    monkeypatch.setattr(
        distributed,
        "_start_heartbeat",
        lambda layout, s, resume: started.append((layout.rank, s, resume)),
    )
    advised = {} if resume is None else {"resume": resume}
    distributed.setup("cpu", timeout_s=1, heartbeat_timeout_s=heartbeat_timeout_s, **advised)
    assert started == ([(1, 3.0, resume or "--resume auto")] if heartbeat_timeout_s else [])


class Broken:
    """A connection to the store that a reset broke: every request fails as torch's does."""

    def __getattr__(self, name):
        def request(*args):
            raise torch.distributed.DistNetworkError("Connection reset by peer")

        return request


def test_a_heartbeats_broken_connection_is_made_again_once():
    """The beating thread goes on, on a new connection, after one broke; a second that breaks
    ends the thread (no third try: each prints torch's C++ dump), and so does a store that can
    no longer be reached (`_job_store`'s `JobNotFormed`), without a traceback."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    made: list[str] = []
    heartbeat = distributed.Heartbeat(
        Broken(), distributed.Distributed(0, 2, 0), 1.0, reconnect=lambda: made.append(1) or store
    )
    threading.Timer(1.0, heartbeat.ended.set).start()
    heartbeat._beat()  # the thread's own loop, here
    assert made == [1] and store.add(distributed._attempt_key("heartbeat/beat-0"), 0) >= 3
    assert store.check([distributed._attempt_key("heartbeat/ended-0")])

    def broken_again():
        made.append(2)
        if len(made) > 3:
            heartbeat.ended.set()  # (a mutant that tries for ever)
        return Broken()

    heartbeat = distributed.Heartbeat(
        Broken(), distributed.Distributed(0, 2, 0), 1.0, reconnect=broken_again
    )
    made.clear()
    heartbeat._beat()
    assert made == [2]

    def unreachable():
        raise JobNotFormed(distributed.STORE_CLOSED)

    heartbeat = distributed.Heartbeat(
        Broken(), distributed.Distributed(0, 2, 0), 1.0, reconnect=unreachable
    )
    heartbeat._beat()  # returns: `_keep_time` ends the job at the timeout


def test_a_process_that_ends_its_command_is_not_held_by_its_heartbeat(monkeypatch):
    """`end` waits for the beating thread to tell the watcher, and no longer (`HEARTBEAT_END_WAIT_S`
    is for a store that does not answer), and is registered to run at exit (a command that ends
    with a traceback skips `finish`)."""
    registered = []
    clock = {"now": 0.0}
    zero, one = heartbeats(2, clock)
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    one.start()
    monkeypatch.undo()
    assert registered == [one.end]
    started = time.monotonic()
    one.end()
    assert time.monotonic() - started < 5
    assert one.store.check([distributed._attempt_key("heartbeat/ended-1")])


def test_a_heartbeat_whose_store_does_not_answer_ends_the_job_at_once(monkeypatch):
    """Nobody can read a store that does not answer: unlike a watcher's line, this one is not
    waited on (its grace is 0)."""
    ended = []
    heartbeat = distributed.Heartbeat(Broken(), distributed.Distributed(0, 2, 0), 1.0)

    def end_job(line, grace_s):
        ended.append((line.split(" (")[0], grace_s))
        heartbeat.ended.set()

    monkeypatch.setattr(distributed, "end_job", end_job)
    heartbeat._keep_time()
    assert ended == [("the torchrun job's store has not answered for 1 s", 0.0)]


def test_a_process_whose_store_was_stopped_as_it_looked_does_not_blame_the_others():
    """The whole job stopped (its store too) while rank 0 waited on a request: the silence it
    then sees is its own stop's, not rank 1's."""
    clock = {"now": 0.0}
    zero, one = heartbeats(2, clock)
    assert beat(clock, 30, [one, zero]) == []  # rank 0 has seen rank 1's last beat
    store = zero.store

    class Stopped:
        def __getattr__(self, name):
            return getattr(store, name)

        def add(self, key, amount):
            if amount == 0:  # the look at rank 1's count: ten minutes pass as it waits
                clock["now"] += 600
            return store.add(key, amount)

    zero.store = Stopped()
    clock["now"] += 5
    assert zero.look() is None and zero.unanswered() is None
    zero.store = store
    assert beat(clock, 120, [zero, one]) == []


def test_watchers_that_name_two_silent_ranks_at_once_end_the_job_with_one_line():
    """Two watchers that find their ranks silent at the same moment (ranks 1 and 3 on a machine
    that was lost) each looked for a line before either told theirs: the first told is the job's
    line, everywhere, not overwritten by the second."""
    clock = {"now": 0.0}
    zero, one, two, three = heartbeats(4, clock)
    assert beat(clock, 10, [one, three, zero, two]) == []
    assert beat(clock, 60, [zero, two]) == []
    clock["now"] += 5
    store, lost = two.store, distributed._attempt_key("heartbeat/lost")

    class Late:  # rank 2's look for a line came just before rank 0 told its own
        def __getattr__(self, name):
            return getattr(store, name)

        def check(self, keys):
            return False if keys == [lost] else store.check(keys)

    line = zero.look()
    assert line.startswith("rank 1 of this torchrun job has given no sign of life")
    two.store = Late()
    assert two.look() == line
    two.store = store
    assert one.look() == three.look() == line


def test_a_heartbeat_beats_in_the_store_rank_0_serves_where_torchrun_serves_none(monkeypatch):
    """torchrun before torch 2.5 (the oldest the project declares, 2.4) leaves the joining to
    torch (env://: rank 0's process serves the store at MASTER_ADDR:MASTER_PORT), and no process
    beat there: a frozen one kept the job waiting 30 minutes again (found by the suite on torch
    2.4.0). The heartbeat connects to that store."""
    served = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    join_as(1, served.port, monkeypatch)
    monkeypatch.setattr(distributed.Heartbeat, "start", lambda self: None)
    monkeypatch.setattr(distributed, "_heartbeat", None)
    distributed._start_heartbeat(distributed.Distributed(1, 2, 0), 3.0)
    heartbeat = distributed._heartbeat
    assert heartbeat is not None and heartbeat.look() is None
    assert served.add(distributed._attempt_key("heartbeat/beat-1"), 0) == 1  # its beat is there
    assert heartbeat.where == f" at 127.0.0.1:{served.port}"


def test_without_local_rank_there_is_no_machines_first_process_to_wait_for(
    monkeypatch, tmp_path, capsys
):
    """A torchrun error file in the environment but no LOCAL_RANK (a launcher of its own): no
    marker to wait for, so rank 1 says its error at once (kills: dropping the LOCAL_RANK check
    in `_said_marker`, which made it wait SAID_TIMEOUT_S for a note nobody writes)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "attempt_0" / "1" / "error.json"))
    monkeypatch.setattr(errors, "_formed_job", lambda: None)
    monkeypatch.setattr(errors, "SAID_TIMEOUT_S", 3.0)
    assert errors._said_marker() is None

    def main(argv):
        raise UserError("a bad flag")

    start = time.monotonic()
    assert run_cli(main, []) == 2
    assert time.monotonic() - start < 2.0
    assert capsys.readouterr().err == "[rank 1] error: a bad flag\n"


@pytest.mark.parametrize(
    "rank, raised, said",
    [
        ("1", RunStopped("SIGTERM", 143), ""),  # LOCAL_RANK taken as RANK: left to rank 0
        ("0", RunStopped("SIGTERM", 143), "stopped: SIGTERM\n"),
        ("1", UserError("a bad image"), "[rank 1] error: a bad image\n"),
    ],
)
def test_without_local_rank_a_process_is_its_machines_first_only_as_rank_0(
    rank, raised, said, monkeypatch, capsys
):
    """In a formed job, a job-wide stop is said by rank 0 alone when LOCAL_RANK is not set (its
    default is RANK; kills: defaulting LOCAL_RANK to "0", which made every rank say it)."""
    monkeypatch.setenv("RANK", rank)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    monkeypatch.setattr(errors, "_formed_job", lambda: object())

    def main(argv):
        raise raised

    assert run_cli(main, []) == (143 if isinstance(raised, RunStopped) else 2)
    assert capsys.readouterr().err == said


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="a pseudo-terminal is POSIX's")
def test_holding_native_stderr_survives_a_closed_terminal():
    """`_native_stderr_held` (every worker's joining, each connection of the heartbeat to the
    store) writes what it held back to descriptor 2 with os.write, past run_cli's guard of
    sys.stderr: on a terminal that closed, even an empty write fails with EIO, and the command
    ended with a traceback (status 1), or the heartbeat's thread died, where a closed terminal
    is now to leave a command going; what it held (torch's dump of a try that failed before one
    that worked) is dropped too."""
    code = (
        "import os\n"
        "from recurrent.distributed import _native_stderr_held\n"
        "from recurrent.errors import run_cli\n"
        "def main(argv):\n"
        "    with _native_stderr_held():\n"
        "        pass\n"
        "    with _native_stderr_held():\n"
        "        os.write(2, b'a native dump\\n')\n"
        "    print('went on')\n"
        "raise SystemExit(run_cli(main, []))\n"
    )
    primary, secondary = os.openpty()
    os.close(primary)  # closed: every write to it fails with EIO
    try:
        ended = subprocess.run(
            [sys.executable, "-c", code],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            stderr=secondary,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    finally:
        os.close(secondary)
    assert (ended.returncode, ended.stdout) == (0, b"went on\n")
