"""The run loop both tasks share: one set of rules for every training run.

A task (char_lm, captioner) supplies its model, its data, one training step that returns a loss,
and one evaluation that returns scores; `Run` does everything else, the same way for both:

- the run folder guard: a folder that holds a run (any of ``RUN_FILES``) is continued with
  ``--resume`` (``--resume auto``: if it has a last.pt) or replaced with ``--overwrite``, never
  silently; a replaced run's checkpoints go with its metrics when the new run's first step starts,
  so the folder never mixes two runs; and while a run lives its folder is locked (``.lock``), so a
  second run started into it is refused;
- the learning rate: linear warmup for ``warmup_steps``, then a cosine down to
  ``lr * min_lr_ratio``, set on the optimizer's param groups every step (nanoGPT's ``get_lr``).
  The cosine spans ``lr_decay_steps`` (0: the run's length in steps). With a time budget it
  follows whichever runs out first, steps or time, so a run stopped by its budget has annealed;
- the time budget counts the run's wall time from its first step: training, evaluation and
  checkpoint writes, summed over resumes. It is the time the run takes, which is what a user with
  an hour on a machine or a job limit on a cluster plans by;
- one weight-decay rule: matrices of linear, convolutional and recurrent layers decay; biases,
  normalisation parameters and embeddings do not (GPT-2 / minGPT);
- checkpoints: ``last.pt`` at every evaluation, every ``checkpoint_every`` steps and/or
  ``checkpoint_every_s`` seconds, at the end, and when SIGINT/SIGTERM/SIGHUP stops the run;
  ``best.pt`` at every evaluation that improves the best score. Every write is atomic (a
  temporary file, fsync, rename), so a kill at any moment leaves the last complete checkpoint
  readable;
- evaluation every ``eval_every`` steps (0: at every pass over the data) and at the end, with
  best/last bookkeeping and early stopping after ``patience`` evaluations without improvement;
- guards: a non-finite loss stops the run with one line naming the step and the last good
  checkpoint, which is left as it was; so does a non-finite gradient norm, whose update would make
  the weights non-finite (except under fp16's gradient scaler, which skips such steps); the
  gradient norm is logged;
- logging: a progress bar, one line per evaluation, ``metrics.jsonl`` (one JSON object per
  logged step and per evaluation) and, with ``tensorboard``, the same numbers for TensorBoard;
- multi-process training under torchrun (`recurrent.distributed`): DDP; rank 0 alone reads and
  writes the run folder, and sends the checkpoint it resumes or starts from to the others;
- gradient accumulation: ``grad_accum_steps`` batches per optimizer step, one gradient exchange
  between the processes per step.

A new run may start from the weights of another run's checkpoint (``--init-from PATH``, the
self-critical phase after cross-entropy, say): only the weights are taken, not the optimizer,
step, schedule or data position, and its architecture and vocabulary must match the config's.
With ``--resume`` the run's own ``last.pt`` wins and ``--init-from`` is not read.

Resume (``--resume``) takes from the checkpoint everything that is the run's state: weights,
optimizer moments, step, best score, early-stopping count, data position, random-number state, the
time used. It takes from the config everything that is a setting: learning rate and schedule
lengths, weight decay, clipping, budgets, evaluation and checkpoint cadence, patience. Fields that
define the network or the data (the task's architecture keys, its vocabulary) must match, or the
resume is refused naming the field. So an interrupted run resumed with the same config is the same
run: bit for bit on the CPU (CUDA kernels may differ in the last bits), unless a time budget, which
depends on the clock, shaped its schedule. A resume with a larger ``max_steps`` extends the run and
re-spans the cosine over the new length (unless ``lr_decay_steps`` is set), so the learning rate
goes back up to where the new schedule is at that step: such a run is not the same as one run
straight to the larger ``max_steps``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from recurrent import distributed, files
from recurrent.checkpoint import (
    FORMAT_VERSION,
    check_same_architecture,
    first_difference,
    is_utf8,
    load_checkpoint,
    save_checkpoint,
)
from recurrent.config import changed_settings, missing_keys, with_defaults
from recurrent.errors import (
    READER_GONE,
    READER_GONE_STATUS,
    STOP_SIGNALS,
    OutOfMemory,
    RunStopped,
    UserError,
    drop_unwritable_stdout,
    first_line,
    out_of_memory,
    output_gone,
    shown,
    signal_said,
    stops_on,
)
from recurrent.files import atomic_write_text
from recurrent.training import rng_state, set_rng_state, set_seed, warmup_cosine

RUN_FORMAT = FORMAT_VERSION  # checkpoints a run can resume from carry "progress"
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")  # a folder with any of them holds a run
# --resume: True resumes (and refuses a folder with nothing to resume); "auto" resumes where the
# folder has a last.pt and else starts a run: one command for a job's first start and its restarts
Resume = bool | Literal["auto"]
NO_DECAY_MODULES = (
    nn.Embedding,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)


@dataclass
class RunSettings:
    """The ``train.*`` fields every task has; each task's TrainConfig extends this dataclass."""

    max_steps: int = 0  # 0: no step limit (the task's epochs, or the time budget, end the run)
    time_budget_s: float = 0.0  # wall time of the run (see the module docstring); 0: none
    lr_decay_steps: int = 0  # length of warmup + cosine in steps; 0: the run's length
    seed: int = 0
    optimizer: Literal["adamw", "rmsprop"] = "adamw"  # rmsprop is char-rnn's choice
    lr: float = 1e-3
    adam_beta2: float = 0.999
    weight_decay: float = 0.0  # on weight matrices only (see `parameter_groups`)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping (the norm is still logged)
    # batches whose gradients each optimizer step sums (their losses count alike): a global
    # batch of batch x grad_accum_steps x processes, as nanoGPT's gradient_accumulation_steps
    grad_accum_steps: int = 1
    eval_every: int = 250  # steps between evaluations; 0: one per pass over the training data
    patience: int = 0  # evaluations without a better score before stopping; 0: never
    checkpoint_every: int = 0  # steps between last.pt writes besides evaluations; 0: none
    checkpoint_every_s: float = 600.0  # seconds between last.pt writes besides evaluations; 0: none
    log_every: int = 50  # steps between metrics.jsonl lines and progress-bar updates
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # see recurrent.precision
    tensorboard: bool = False  # also write DIR/tensorboard (pip install tensorboard)
    compile: bool = False  # torch.compile the training forward (checkpoints hold the plain module)
    # under torchrun: a process silent this long (frozen, its machine lost) ends the job; 0: only
    # a collective's 30-minute timeout does (`recurrent.distributed.Heartbeat`)
    heartbeat_timeout_s: float = 300.0


# Where each RunSettings number must lie (`recurrent.config.check_bounds` notation); each task's
# BOUNDS table adds these to its own rows.
RUN_BOUNDS = {
    "train.max_steps": "[0, 1e9]",
    "train.time_budget_s": "[0, inf)",
    "train.lr_decay_steps": "[0, 1e9]",
    "train.seed": "[0, 4294967295]",
    "train.lr": "(0, 10]",
    "train.adam_beta2": "[0, 1)",
    "train.weight_decay": "[0, 10]",
    "train.warmup_steps": "[0, 1e9]",
    "train.min_lr_ratio": "[0, 1]",
    "train.grad_clip": "[0, inf)",
    "train.grad_accum_steps": "[1, 4096]",
    "train.eval_every": "[0, 1e9]",
    "train.patience": "[0, 1e9]",
    "train.checkpoint_every": "[0, 1e9]",
    "train.checkpoint_every_s": "[0, inf)",
    "train.log_every": "[1, 1e9]",
    "train.heartbeat_timeout_s": "[0, 1e6]",
}
MIN_HEARTBEAT_TIMEOUT_S = 1.0  # below it a healthy job's processes miss beats under load


def check_run_settings(settings: RunSettings) -> None:
    """What `RUN_BOUNDS` cannot say: a heartbeat timeout is 0 (none) or at least
    `MIN_HEARTBEAT_TIMEOUT_S` (0.2 s ended healthy two-process jobs here); AdamW's decay of each
    step, lr x weight_decay, is below 1 (at 1 or more it scales the weights by zero or less each
    step: 10 x 10 trained to a validation loss of 1e9, status 0)."""
    check_decay(settings, settings.lr, "train.lr")
    if 0 < settings.heartbeat_timeout_s < MIN_HEARTBEAT_TIMEOUT_S:
        raise UserError(
            f"config key 'train.heartbeat_timeout_s' must be 0 (no heartbeats) or at least "
            f"{MIN_HEARTBEAT_TIMEOUT_S:g} s, got {settings.heartbeat_timeout_s}"
        )


def check_decay(settings: RunSettings, lr: float, key: str) -> None:
    """AdamW's decay of a step for parameters trained at ``lr`` (config key ``key``), lr x
    weight_decay, must be below 1."""
    decay = lr * settings.weight_decay
    if settings.optimizer == "adamw" and decay >= 1:
        raise UserError(
            f"config keys '{key}' x 'train.weight_decay' must be below 1 with AdamW, got "
            f"{lr:g} x {settings.weight_decay:g} = {decay:g}: each step would scale the weight "
            f"matrices by {1 - decay:g}; lower either"
        )


@dataclass
class StepResult:
    """What a task's training step returns: the loss to minimise, how many items (characters,
    caption pairs) it trained on, and whether this step finished a pass over the training data."""

    loss: Tensor
    items: int
    epoch_end: bool = False
    # the step's own figures besides the loss (self-critical training's mean reward, say): their
    # means over the logged steps go into metrics.jsonl's train lines (and TensorBoard)
    figures: dict[str, float] = field(default_factory=dict)


class Stateful(Protocol):
    """The task's data position (and anything else of its own that a resume must restore). A
    resume with another number of processes gives it the first process's state, or, where it
    has ``load_state_dicts`` (char_lm's streams, each process's own), every process's."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Progress:
    """Where a run is; all of it goes into the checkpoint."""

    step: int = 0
    elapsed_s: float = 0.0
    best_scores: dict[str, float] | None = None
    best_step: int = -1
    bad_evals: int = 0
    last_scores: dict[str, float] = field(default_factory=dict)
    evaluated_step: int = -1
    # Since the last metrics line: [loss, grad norm] per step, and each StepResult figure's
    # values, so a resumed run logs the same means.
    pending: list[list[float]] = field(default_factory=list)
    figures: dict[str, list[float]] = field(default_factory=dict)
    since_eval: list[float] = field(default_factory=lambda: [0.0, 0.0])  # loss sum, steps


# --------------------------------------------------------------------------------------------
# Rules


def parameter_groups(
    parts: list[tuple[str, nn.Module, float]], weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer groups for ``(name, module, lr)`` parts: in each, weight matrices decay and biases,
    normalisation parameters and embeddings do not. Frozen parameters are left out."""
    groups = []
    for name, module, lr in parts:
        no_decay = {
            id(param)
            for sub in module.modules()
            if isinstance(sub, NO_DECAY_MODULES)
            for param in sub.parameters(recurse=False)
        }
        decay, plain = [], []
        for param in module.parameters():
            if not param.requires_grad:
                continue
            (plain if id(param) in no_decay or param.ndim < 2 else decay).append(param)
        for params, wd, suffix in ((decay, weight_decay, ""), (plain, 0.0, "_no_decay")):
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": lr,
                        "base_lr": lr,
                        "weight_decay": wd,
                        "name": name + suffix,
                    }
                )
    return groups


def build_optimizer(groups: list[dict[str, Any]], settings: RunSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "rmsprop":  # char-rnn: RMSprop with decay rate 0.95
        return torch.optim.RMSprop(groups, lr=settings.lr, alpha=0.95)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, settings.adam_beta2))


def lr_factor(step: int, elapsed_s: float, settings: RunSettings, total_steps: int) -> float:
    """The learning-rate multiplier for ``step`` (0-based): warmup, then the cosine over steps or
    over the time budget, whichever is further along."""
    if settings.warmup_steps > 0 and step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = settings.lr_decay_steps or total_steps
    by_steps = (
        (step - settings.warmup_steps) / (span - settings.warmup_steps)
        if span > settings.warmup_steps
        else float(span > 0)  # warmup filled the whole span: the cosine is over
    )
    by_time = elapsed_s / settings.time_budget_s if settings.time_budget_s else 0.0
    fraction = min(1.0, max(by_steps, by_time))
    return warmup_cosine(
        round(fraction * 1_000_000),
        warmup_steps=0,
        total_steps=1_000_000,
        min_ratio=settings.min_lr_ratio,
    )


# --------------------------------------------------------------------------------------------
# The metrics log


def parse_metrics(text: str) -> list[dict[str, Any]]:
    """The usable lines of a metrics.jsonl text: JSON objects of kind "train" or "eval" with an
    int step. A line that is not JSON (the half-written last line of a run killed mid-write), not
    an object, of another kind or without a step is skipped; unknown keys are kept. Lines end at
    "\n" alone (a "\r" before it is JSON's whitespace; U+2028 inside a string is not an end), and
    a byte-order mark at the start is skipped."""
    records = []
    for line in text.removeprefix("\ufeff").split("\n"):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, 5000-digit numbers, deep nesting
            continue
        if not isinstance(record, dict) or record.get("kind") not in ("train", "eval"):
            continue
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or abs(step) >= 2**63:
            continue
        if _LONE_SURROGATE.search(line) and not is_utf8(json.dumps(record, ensure_ascii=False)):
            continue  # "\ud800" escapes decode to text no browser or terminal can show
        records.append(record)
    return records


_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # an escaped surrogate: lone or in a pair


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """`parse_metrics` of a metrics.jsonl file; no file, no records."""
    try:
        return parse_metrics(Path(path).read_bytes().decode("utf-8", errors="replace"))
    except FileNotFoundError:
        return []


class MetricsLog:
    """``DIR/metrics.jsonl`` (and TensorBoard, when asked for); only rank 0 writes."""

    def __init__(
        self, out_dir: Path, *, resumed_step: int | None, tensorboard: bool, enabled: bool
    ) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if resumed_step is None:
            self.path.unlink(missing_ok=True)
        else:  # drop what was logged after the checkpoint the run resumes from, and torn lines
            kept = [r for r in read_metrics(self.path) if r["step"] <= resumed_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                missing = isinstance(err, ModuleNotFoundError) and err.name == "tensorboard"
                problem = (
                    "tensorboard is not installed"
                    if missing
                    else f"torch cannot use the installed tensorboard ({first_line(err)})"
                )
                raise UserError(
                    f"train.tensorboard is on but {problem}; pip install -U 'tensorboard>=2.21' "
                    "(the project's 'tensorboard' extra)"
                ) from None
            # Hide the events of what this run replaces: past the checkpoint it resumes from, or
            # all of them for a fresh run (--overwrite leaves the old event files in the folder).
            purge = 0 if resumed_step is None else resumed_step + 1
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as err:  # a full disk names no file (readers skip the torn line it left)
            raise files.named(err, self.path) from None
        if self.writer is not None:
            step = record["step"]
            if record["kind"] == "train":
                for key, value in record.items():  # loss, lr, grad_norm, throughput, figures
                    if key not in ("step", "time_s", "timestamp") and not isinstance(value, str):
                        self.writer.add_scalar(f"train/{key}", value, step)
            else:
                for key, value in record["scores"].items():
                    self.writer.add_scalar(f"val/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------
# Signals


class _StopSignals:
    """SIGINT and `STOP_SIGNALS` (SIGTERM, SIGHUP) set a flag the loop reads after each step; a
    second SIGINT interrupts at once. A SIGHUP that is ignored (`nohup`) stays ignored. Installed
    only in the main thread (signal handlers cannot be set elsewhere).

    The first signal names the stop: torchrun's agent, given a second signal while it waits for
    its processes to stop (a second Ctrl-C; a closed terminal's hang-up from the shell, then from
    the kernel as the shell exits), sends them SIGTERM, which made a run stopped by Ctrl-C or a
    closed terminal say "stopped: SIGTERM" and exit with 143."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, *STOP_SIGNALS):
                if stops_on(signum):
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------------------------
# The run


def _beats(new: tuple, best: tuple) -> bool:
    """Whether a score key beats the best one; a key with a NaN or an infinity is worse than any
    finite one (a NaN best would otherwise compare False with everything after it, forever)."""
    finite_new, finite_best = (all(math.isfinite(v) for v in key) for key in (new, best))
    if finite_new != finite_best:
        return finite_new
    return finite_new and new > best


def _in_place_of_overwrite(flag: str, overwrite: bool) -> str:
    """``flag`` (--resume, --resume auto) as a line advises it for the same command: in place of
    --overwrite where the command had it, as argparse refuses the two together."""
    return f"{flag} in place of --overwrite" if overwrite else flag


class Run:
    """One training run in ``out_dir``: see the module docstring for the rules it applies.

    A task's train function reads::

        run = Run(out_dir, task="char_lm", settings=cfg.train, config=to_dict(cfg),
                  defaults=to_dict(CharLMConfig()), ...)
        ...build data and model on run.device...
        run.check_resume(architecture_keys, vocab)
        optimizer = run.optimizer([("model", model, cfg.train.lr)])
        run.restore(model, optimizer, data)
        summary = run.fit(model, optimizer, data, step=..., evaluate=..., total_steps=...)

    ``defaults`` (the task config's) fill in the keys that the config of a checkpoint written by
    an older version lacks, so that it resumes, or starts a run, as what it was: trained with
    their defaults.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        task: str,
        settings: RunSettings,
        config: dict[str, Any],
        defaults: dict[str, Any] | None = None,
        resume: Resume = False,
        overwrite: bool = False,
        quiet: bool = False,
        init_from: str | os.PathLike[str] | None = None,
    ) -> None:
        from recurrent.precision import Precision

        self.out_dir = Path(out_dir)
        self.task = task
        self.settings = settings
        self.config = config
        self.quiet = quiet
        self.output_lost = False  # stdout's reader is gone (`train ... | head`): stop as signalled
        self.last_path = self.out_dir / "last.pt"
        self.best_path = self.out_dir / "best.pt"
        # --init-from: another run's weights to start from (not read when resuming)
        self.init_path = Path(init_from) if init_from else None
        # how the same command goes on from last.pt (a stop's line says it)
        self.resume_flag = _in_place_of_overwrite("--resume", overwrite)
        self.payload: dict[str, Any] | None = None
        self.init_payload: dict[str, Any] | None = None
        self.older_keys: list[str] = []  # keys the config of last.pt lacked (an older version's)
        # Rank 0 alone reads and writes the run folder, and reads the checkpoint to resume or start
        # from, which the other processes receive from it: under torchrun on several machines the
        # run folder and that checkpoint need only be on the first one.
        if distributed.from_environment().is_main:
            self._read_checkpoints(task, self._check_folder(resume, overwrite), defaults)
            files.hold(self.out_dir, self._in_use)  # refuse a second run while this one lives
        self.dist, self.device = distributed.setup(
            settings.device,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            resume=_in_place_of_overwrite(distributed.RESUME_AUTO, overwrite),
        )
        self.payload, self.init_payload = self.dist.broadcast_object(
            (self.payload, self.init_payload)
        )
        if self.payload is not None:
            self.init_path = None
        if resume == "auto" and self.payload is None:
            self.log(f"--resume auto: no {self.last_path} yet, so a new run")
        self.precision = Precision.choose(settings.precision, self.device)
        set_seed(settings.seed)
        self.progress = Progress()
        self._weights_loaded: nn.Module | None = None  # the model `load_weights` filled

    # --- set-up -------------------------------------------------------------------------------

    def _in_use(self, holder: str) -> UserError:
        return UserError(
            f"{self.out_dir} is in use by another training run ({holder}); wait for it to end or "
            "stop it, or choose another --out-dir"
        )

    def _check_folder(self, resume: Resume, overwrite: bool) -> bool:
        """The run folder guard (module docstring): refuse a folder that is a file, a resume with
        nothing to resume, and a new run into a folder that holds one without --overwrite; return
        whether the run resumes. ``resume="auto"`` resumes a folder with a last.pt and otherwise
        starts a run, replacing what a run that never saved a checkpoint left (its metrics)."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"--out-dir {self.out_dir} is a file; pass a folder for the run")
        held = [name for name in RUN_FILES if (self.out_dir / name).exists()]
        if resume == "auto":
            resume = self.last_path.is_file()
            overwrite = overwrite or held == ["metrics.jsonl"]
        if resume and not self.last_path.is_file():
            if (running := files.holder(self.out_dir)) is not None:  # it has not written one yet
                raise self._in_use(running)
            raise UserError(
                f"nothing to resume: {self.last_path} does not exist; drop --resume to start a run"
            )
        if not resume and held and not overwrite:
            if self.last_path.is_file():
                how = "pass --resume to continue it, --overwrite to replace it"
            else:  # (--resume would find nothing to resume)
                how = "it has no last.pt to go on from: pass --overwrite to replace it"
                if self.best_path.is_file():
                    how += f" (--init-from {self.best_path} starts a run from its best weights)"
            raise UserError(
                f"{self.out_dir} already holds a run ({', '.join(held)}); {how}, or choose "
                "another --out-dir"
            )
        return bool(resume)

    def _read_checkpoints(self, task: str, resume: bool, defaults: dict[str, Any] | None) -> None:
        """Read ``last.pt`` (``resume``) or else the ``--init-from`` checkpoint, with the config
        keys added since it was written at their defaults."""
        if resume:
            self.payload = load_checkpoint(self.last_path, task=task)
            if self.payload.get("format_version", 1) < RUN_FORMAT or "progress" not in self.payload:
                raise UserError(
                    f"cannot resume from {self.last_path}: it was written by an older version of "
                    "this project (or exported for serving), which a run cannot go on from; start "
                    f"a new run from its weights: --init-from {self.last_path} --out-dir "
                    "ANOTHER_FOLDER"
                )
        elif self.init_path is not None:
            self.init_payload = load_checkpoint(self.init_path, task=task)
        for payload, path in ((self.payload, self.last_path), (self.init_payload, self.init_path)):
            if payload is None or defaults is None:
                continue
            if payload is self.payload and isinstance(payload.get("config"), dict):
                self.older_keys = missing_keys(payload["config"], defaults)
            try:  # the keys added since it was written
                payload["config"] = with_defaults(payload["config"], defaults)
            except UserError as err:
                raise UserError(
                    f"cannot use {path}: {err}; the file was edited or damaged"
                ) from None

    def log(self, line: str) -> None:
        """One line for the user (rank 0 only), kept clear of the progress bar."""
        if not self.dist.is_main or self.output_lost:
            return
        try:
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:  # the run stops at its next step, saved, as for a signal
            self.output_lost = True
            drop_unwritable_stdout(gone=True)  # (unbuffered, a flush would not fail again)
        except OSError as err:  # its terminal closed: SIGHUP stops the run (under nohup, it
            if not output_gone(err, sys.stdout):  # goes on unheard)
                raise
            drop_unwritable_stdout(gone=True)

    def check_resume(
        self,
        architecture_keys: list[str],
        vocab: list[str],
        what: str,
        resume_keys: Sequence[str] = (),
    ) -> None:
        """Refuse a resume (or an --init-from) whose network or vocabulary differs from the
        checkpoint's. A resume must also keep the optimizer (its saved state is that optimizer's)
        and ``resume_keys``: what else the saved state or the best score depends on (the trained
        parts, the validation data, the metric that chose best.pt)."""
        if self.payload is not None:
            checked = (self.payload, self.last_path, "resume from", "drop --resume")
            remedy = "use the checkpoint's value"
            keys = [*architecture_keys, "train.optimizer", *resume_keys]
        elif self.init_payload is not None:
            checked = (self.init_payload, self.init_path, "start from", "drop --init-from")
            remedy = "set the checkpoint's value"
            keys = architecture_keys
        else:
            return
        payload, path, action, drop = checked
        check_same_architecture(
            payload["config"], self.config, keys, path,
            action=action, remedy=f"{drop} or {remedy}",
        )  # fmt: skip
        saved = list(payload.get("vocab", []))
        if (at := first_difference(list(vocab), saved)) is not None:
            differs = (
                f"entry {at} is {shown(vocab[at])}, the checkpoint's {shown(saved[at])}"
                if at < min(len(vocab), len(saved))
                else f"{len(vocab)} entries, the checkpoint has {len(saved)}"
            )
            raise UserError(
                f"cannot {action} {path}: {what} give another vocabulary than the "
                f"checkpoint's ({differs}); use the same data, or {drop}"
            )
        if self.payload is not None:
            self._note_changes()

    def _note_changes(self) -> None:
        """On a resume, say which settings the config changes (they are the config's to set, but
        a resume that changes them is not the run it was), and a precision other than the one the
        run trained in (`auto` may pick another on another machine, or another version)."""
        from recurrent.precision import recorded_precision, resolve

        assert self.payload is not None
        changes = changed_settings(self.payload["config"], self.config, self.older_keys)
        if changes:
            listed = ", ".join(changes[:8]) + (
                f" and {len(changes) - 8} more" if changes[8:] else ""
            )
            self.log(f"note: the config changes the run's settings: {listed}")
        trained, now = recorded_precision(self.payload), self.precision.name
        if trained is not None and trained != now:
            try:  # can this device run it?
                keep = f"; pass --set train.precision={resolve(trained, self.device)} to keep it"
            except UserError:
                keep = ""
            setting = self.settings.precision
            self.log(
                f"note: the run was training in {trained} at step {self.payload['step']}; it "
                f"goes on in {now} (train.precision {setting} on {self.device.type}){keep}"
            )
        elif trained is None and self.settings.precision == "auto" and now != "fp32":
            self.log(
                f"note: {self.last_path} does not record the precision its run trained in (an "
                f"older version's checkpoint of train.precision auto); it goes on in {now}, but "
                "auto was fp32 on every CPU until 2026-12-05: pass --set train.precision=fp32 if "
                "the run trained so"
            )

    def check_same_data(self, fingerprint: Callable[[], str], what: str) -> None:
        """Under torchrun, refuse to train when the processes read different data: on machines
        with disks of their own each reads its own copy, and a copy that differs (another version
        of the file) gave another vocabulary, and so DDP's traceback on a parameter's shape, or,
        with the same vocabulary, replicas trained on different data without a word.
        ``fingerprint`` is called under torchrun only (one process has nothing to compare)."""
        if not self.dist.enabled:
            return
        prints = self.dist.all_gather_objects(fingerprint())
        other = next((rank for rank, value in enumerate(prints) if value != prints[0]), None)
        if other is not None:
            raise UserError(
                f"rank {other}'s copy of {what} differs from rank 0's: each machine reads its own "
                "copy, and every copy must be the same; copy rank 0's data to every machine"
            )

    def optimizer(self, parts: list[tuple[str, nn.Module, float]]) -> torch.optim.Optimizer:
        return build_optimizer(parameter_groups(parts, self.settings.weight_decay), self.settings)

    def load_weights(self, model: nn.Module) -> None:
        """Load the weights the run starts from (its ``last.pt`` on resume, else ``--init-from``'s)
        into a freshly built model; `restore` does it too. A task calls it first when what it
        builds before `restore` depends on the weights (the captioner's feature cache holds its
        frozen encoder's output, which must be the checkpoint's encoder, not a fresh one)."""
        if self._weights_loaded is model:
            return
        if self.payload is not None:
            try:
                model.load_state_dict(self.payload["model"])
            except (KeyError, ValueError, RuntimeError, TypeError) as err:
                raise self._damaged(err) from None
        elif self.init_payload is not None:
            try:
                model.load_state_dict(self.init_payload["model"])
            except (KeyError, RuntimeError) as err:
                raise UserError(
                    f"cannot start from {self.init_path}: its weights do not fit "
                    f"({first_line(err, 'no weights')}); "
                    "pass a checkpoint of this config's network"
                ) from None
            self.log(f"starting from the weights of {self.init_path}")
        self._weights_loaded = model

    def _end_step_early(self, params: list[nn.Parameter], planned: int, taken: int) -> None:
        """End an optimizer step after ``taken`` of its ``planned`` batches: the data ended its
        epoch sooner than `batches_to_epoch_end` said (the captioner's ``data.bad_images=skip``
        passed over batches). Each loss then counts 1 / taken, as in a step planned so; under
        torchrun the gradients, kept local so far, are averaged here (every process passes over
        the same batches, so every process ends the step at the same batch)."""
        grads = [param.grad for param in params if param.grad is not None]
        for grad in grads:
            grad.mul_(planned / taken)
        if self.dist.enabled:
            for grad in grads:
                self.dist.all_reduce_sum(grad)
                grad.div_(self.dist.world_size)

    def _damaged(self, err: Exception) -> UserError:
        """The line for a ``last.pt`` whose training state does not load (``err`` says why)."""
        return UserError(
            f"cannot resume from {self.last_path}: it lacks or has damaged training state "
            f"({first_line(err)}); start a new run from its weights: --init-from "
            f"{self.last_path} --out-dir ANOTHER_FOLDER"
        )

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, data: Stateful) -> None:
        """Load the checkpoint's state into a freshly built model, optimizer and data position.

        Settings come from the config (see the module docstring): after loading the optimizer,
        each group's hyperparameters (base learning rate, weight decay, betas) are set from the
        config again.
        """
        self.load_weights(model)
        if self.payload is None:
            if self.dist.enabled:  # the same initial weights everywhere, then per-rank randomness
                torch.manual_seed(self.settings.seed + 1_000_003 * self.dist.rank)
            return
        payload = self.payload
        # every group's hyperparameters as the config gives them (all but the parameters)
        settings_now = [
            {key: value for key, value in group.items() if key != "params"}
            for group in optimizer.param_groups
        ]
        try:
            optimizer.load_state_dict(payload["optimizer"])
            for group, now in zip(optimizer.param_groups, settings_now, strict=True):
                group.update(now)  # the config wins: base rates, weight decay, betas
            if payload.get("scaler") is not None:
                self.precision.scaler_state = payload["scaler"]
            datas = payload["data"]
            if len(datas) == self.dist.world_size:
                data.load_state_dict(datas[self.dist.rank])
            elif hasattr(data, "load_state_dicts"):  # each process's own: they are regrouped
                data.load_state_dicts(datas)
            else:  # the same in every process (the captioner's epoch and position)
                data.load_state_dict(datas[0])
            self.progress = Progress(**payload["progress"])
            rngs = payload["rng"]
        except (KeyError, IndexError, ValueError, RuntimeError, TypeError) as err:
            raise self._damaged(err) from None
        if len(rngs) != self.dist.world_size:
            self.log(
                f"note: the checkpoint was written by {len(rngs)} process(es), this run has "
                f"{self.dist.world_size}: random-number streams restart, the run is not bit-exact"
            )
            torch.manual_seed(self.settings.seed + 1_000_003 * self.dist.rank + self.progress.step)
        else:
            set_rng_state(rngs[self.dist.rank], self.device)
        self._complete_best(payload)
        self.log(f"resumed from {self.last_path} at step {self.progress.step}")

    def _complete_best(self, payload: dict[str, Any]) -> None:
        """Write ``best.pt`` from last.pt's ``payload`` where last.pt was saved at an evaluation
        that improved the best score and best.pt was not written after it: the run was killed
        between the two writes (the same payload), and best.pt is an earlier one's, or none.
        Written at the same time counts as not after: a file system's clock may tick by the
        second (ext3, HFS+), and a best.pt written then is that payload's or an earlier one's."""
        if not self.dist.is_main or self.progress.best_step != self.progress.step:
            return
        best = self.best_path.stat().st_mtime_ns if self.best_path.is_file() else -1
        if best <= self.last_path.stat().st_mtime_ns:
            save_checkpoint(payload, self.best_path)

    # --- the loop -----------------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: Stateful,
        *,
        step: Callable[[nn.Module], StepResult],
        evaluate: Callable[[nn.Module], dict[str, float]],
        score_key: Callable[[dict[str, float]], tuple[float, ...]],
        total_steps: int,
        unit: str,
        card: dict[str, Any],
        extra: Callable[[], dict[str, Any]] | None = None,
        describe: Callable[[dict[str, float]], str] | None = None,
        finished: Callable[[], str | None] | None = None,
    ) -> dict[str, Any]:
        """Train until the step limit, the time budget or early stopping; return a summary.

        ``step(model)`` runs one forward pass on the next batch (inside the autocast of the
        run's precision) and returns a `StepResult`; the engine does backward, clipping and the
        optimizer step. ``evaluate(model)`` returns scores (``model`` is in eval mode) and
        ``score_key(scores)`` orders them (greater is better). ``extra()`` adds task keys to each
        checkpoint (e.g. the vocabulary); ``describe(scores)`` formats an evaluation line;
        ``finished()`` names a task's own reason to stop (the captioner's epochs), or None.
        An optimizer step sums ``train.grad_accum_steps`` such batches, fewer where ``data`` has
        a ``batches_to_epoch_end()`` that says its epoch ends sooner (the captioner's epochs).
        """
        settings, progress = self.settings, self.progress
        main = self.dist.is_main
        wrapped = self._wrap(model)
        # under torchrun the gradients of all but an optimizer step's last batch stay local
        no_sync = wrapped.no_sync if self.dist.enabled else contextlib.nullcontext
        to_epoch_end = getattr(data, "batches_to_epoch_end", None)
        if settings.compile:  # `model` (saved, evaluated) stays the plain module: no prefixes
            wrapped = torch.compile(wrapped)
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.payload is None:  # a fresh run (--overwrite): the old run's checkpoints go
                for path in (self.best_path, self.last_path):  # first (a kill between them
                    path.unlink(missing_ok=True)  # and its metrics leaves no run to resume)
        metrics = MetricsLog(
            self.out_dir,
            resumed_step=progress.step if self.payload is not None else None,
            tensorboard=settings.tensorboard,
            enabled=main,
        )
        scaler = self.precision.grad_scaler()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        steps_at_start, items_total, started = progress.step, 0, time.perf_counter()
        elapsed_before = progress.elapsed_s
        last_save = time.perf_counter()
        saved_step = progress.step if self.payload is not None else None  # last.pt's step
        doing: list[str | None] = [None]  # what runs out of memory, where not a training step
        call_losses: list[float] = []  # every step's loss in this call, for the summary
        stats: list[Tensor] = []  # [loss, grad norm] of steps not yet checked (on the device)
        window_items, window_start = 0, time.perf_counter()

        def elapsed() -> float:
            return elapsed_before + time.perf_counter() - started

        # The schedule's clock: under torchrun the processes' mean elapsed time, agreed after
        # every step with the stop flags, so that all of them set the same learning rate (each
        # process's own clock would make the replicas drift apart).
        agreed_s = elapsed_before

        def flush_checks() -> None:
            """Fold the device-side [loss, grad norm] of recent steps into plain numbers (one
            host sync), stopping on a non-finite loss (or gradient) before anything is written."""
            if not stats:
                return
            values = torch.stack(stats)  # (steps, 2): this process's [loss, grad norm]
            if self.dist.enabled:  # the mean over the processes: every rank logs the same
                values = self.dist.all_reduce_sum(values) / self.dist.world_size
            values = values.cpu().tolist()
            stats.clear()
            for offset, (loss, grad_norm) in enumerate(values):
                bad = None
                if not math.isfinite(loss):
                    bad = ("training loss", loss)
                elif not math.isfinite(grad_norm) and not scaler.is_enabled():
                    # the update has made the weights non-finite (fp16's scaler skips such steps)
                    bad = ("gradient norm", grad_norm)
                if bad is not None:
                    bad_step = progress.step - len(values) + offset + 1
                    message = self._non_finite_message(bad_step, *bad, saved_step)
                    raise RunStopped(message, exit_code=3)
            progress.pending.extend(values)
            call_losses.extend(loss for loss, _ in values)
            progress.since_eval[0] += sum(loss for loss, _ in values)
            progress.since_eval[1] += len(values)

        def save(improved: bool) -> None:
            nonlocal last_save, saved_step
            flush_checks()
            progress.elapsed_s = elapsed()
            doing[0] = f"saving the checkpoint of step {progress.step}"
            # every rank's random-number state and data position (its own streams, say)
            rngs = self.dist.all_gather_objects(rng_state(self.device))
            datas = self.dist.all_gather_objects(data.state_dict())
            if main:
                payload = self._payload(model, optimizer, scaler, datas, rngs, card, extra)
                # last.pt first: a run killed between the two writes resumes (--resume auto), and
                # `restore` then writes the best.pt it lacks
                save_checkpoint(payload, self.last_path)
                saved_step = progress.step  # (best.pt's write may fail yet)
                if improved:
                    save_checkpoint(payload, self.best_path)
            last_save, saved_step = time.perf_counter(), progress.step
            doing[0] = None

        def run_evaluation() -> None:
            flush_checks()
            model.eval()
            doing[0] = f"in the evaluation at step {progress.step}"
            with torch.no_grad(), self.precision.autocast():
                scores = evaluate(model)
            doing[0] = None
            # rank 0's scores decide best.pt and patience everywhere (a process that scored on
            # its own could tie-break otherwise)
            scores = self.dist.broadcast_object(scores)
            model.train()
            train_loss, _ = self._reduce_means(
                [[progress.since_eval[0], 0.0]], progress.since_eval[1]
            )
            progress.since_eval = [0.0, 0.0]
            progress.last_scores = scores
            progress.evaluated_step = progress.step
            better = progress.best_scores is None or _beats(
                score_key(scores), score_key(progress.best_scores)
            )
            if better:
                progress.best_scores, progress.best_step, progress.bad_evals = (
                    scores,
                    progress.step,
                    0,
                )
            else:
                progress.bad_evals += 1
            metrics.write(
                {
                    "kind": "eval",
                    "step": progress.step,
                    "time_s": round(elapsed(), 3),
                    "timestamp": time.time(),
                    "best": better,
                    "train_loss": train_loss,
                    "scores": scores,
                }
            )
            text = (
                describe(scores)
                if describe
                else ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            )
            self.log(
                f"step {progress.step}: train loss {train_loss:.4f}, {text}"
                + (" (best)" if better else "")
            )
            save(better)

        def stop_reason(over_budget: bool) -> str | None:
            if finished is not None and (reason := finished()):
                return reason
            if total_steps and progress.step >= total_steps:
                return "max_steps"
            if settings.patience and progress.bad_evals >= settings.patience:
                return "patience"
            if over_budget:
                return "time_budget"
            return None

        def budget_spent() -> bool:
            return bool(settings.time_budget_s and elapsed() >= settings.time_budget_s)

        bar = tqdm(
            total=total_steps or None,
            initial=min(progress.step, total_steps) if total_steps else progress.step,
            unit="step",
            desc="train",
            dynamic_ncols=True,
            disable=self.quiet or not main or None,
            file=sys.stderr,
        )
        model.train()
        reason = stop_reason(self._agree(budget_spent())[0])
        try:
            with _StopSignals() as signals:
                while reason is None:
                    now_s = agreed_s if self.dist.enabled else elapsed()
                    factor = lr_factor(progress.step, now_s, settings, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = group["base_lr"] * factor
                    optimizer.zero_grad(set_to_none=True)
                    accum = settings.grad_accum_steps
                    if to_epoch_end is not None:  # a step ends with its epoch's last batch
                        accum = min(accum, to_epoch_end())
                    losses, items, epoch_end = [], 0, False
                    for micro in range(accum):
                        last = micro == accum - 1
                        with no_sync() if not last else contextlib.nullcontext():
                            with self.precision.autocast():
                                result = step(wrapped)
                            scaler.scale(result.loss / accum).backward()
                        losses.append(result.loss.detach().float())
                        items += result.items
                        epoch_end = epoch_end or result.epoch_end
                        for name, value in result.figures.items():
                            progress.figures.setdefault(name, []).append(float(value))
                        if epoch_end and not last and to_epoch_end is not None:
                            # the epoch ended sooner than planned (batches were passed over)
                            self._end_step_early(params, accum, micro + 1)
                            break
                    scaler.unscale_(optimizer)
                    max_norm = settings.grad_clip if settings.grad_clip > 0 else math.inf
                    grad_norm = nn.utils.clip_grad_norm_(params, max_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    loss = torch.stack(losses).mean()  # one batch: its loss, to the bit
                    stats.append(torch.stack([loss, grad_norm.detach().float().to(loss.device)]))
                    progress.step += 1
                    items_total += items
                    window_items += items
                    bar.update(1)
                    if progress.step % settings.log_every == 0:
                        flush_checks()
                        loss_mean, grad_mean = self._reduce_means(progress.pending)
                        figures = self._figure_means(progress.figures)
                        progress.figures = {}
                        now = time.perf_counter()
                        throughput = (
                            window_items * self.dist.world_size / max(now - window_start, 1e-9)
                        )
                        window_items, window_start = 0, now
                        progress.pending = []
                        metrics.write(
                            {
                                "kind": "train",
                                "step": progress.step,
                                "time_s": round(elapsed(), 3),
                                "timestamp": time.time(),
                                "lr": optimizer.param_groups[0]["lr"],
                                "loss": loss_mean,
                                "grad_norm": grad_mean,
                                "throughput": round(throughput, 2),
                                "throughput_unit": unit,
                                **figures,
                            }
                        )
                        bar.set_postfix(
                            loss=f"{loss_mean:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}"
                        )
                    # What depends on the clock or on a signal is agreed by all processes (one
                    # small all-reduce under torchrun), so all stop, evaluate and save together.
                    agreed_s, (over_budget, save_due, signalled, output_lost) = self._agree_clock(
                        elapsed(),
                        budget_spent(),
                        bool(
                            settings.checkpoint_every_s
                            and time.perf_counter() - last_save >= settings.checkpoint_every_s
                        ),
                        signals.received is not None or self.output_lost,
                        self.output_lost,  # rank 0's: the others then stop for it too
                    )
                    reason = stop_reason(over_budget)
                    due = (settings.eval_every and progress.step % settings.eval_every == 0) or (
                        not settings.eval_every and epoch_end
                    )
                    paused = time.perf_counter()
                    if due or reason is not None:
                        run_evaluation()
                        reason = stop_reason(over_budget)
                    elif save_due or (
                        settings.checkpoint_every and progress.step % settings.checkpoint_every == 0
                    ):
                        save(improved=False)
                    window_start += time.perf_counter() - paused  # a window's rate: its steps'
                    if signalled:
                        if progress.evaluated_step != progress.step:
                            save(improved=False)
                        if output_lost and signals.received is None:
                            name, status = READER_GONE, READER_GONE_STATUS
                        else:
                            signals.received = (
                                signals.received or signal.SIGTERM
                            )  # maybe another rank's (on another machine)
                            name = signal_said(signals.received)
                            status = 128 + signals.received
                        where = "" if self.dist.is_main else " on rank 0's machine"
                        raise RunStopped(
                            f"{name} at step {progress.step}: {self.last_path} is saved{where}; "
                            f"run the same command with {self.resume_flag} to continue",
                            exit_code=status,
                        )
            if progress.evaluated_step != progress.step:
                run_evaluation()  # every run ends with an evaluation and last.pt at its last step
        except (RuntimeError, MemoryError) as err:
            if (said := out_of_memory(err)) is None:
                raise
            raise OutOfMemory(
                f"{said} {doing[0] or f'at step {progress.step + 1}'}",
                f"{self.last_path} is as it was, at step {saved_step}: run again with "
                f"{self.resume_flag} to go on from there"
                if saved_step is not None
                else "nothing was saved yet",
            ) from None
        finally:
            bar.close()
            metrics.close()
        train_time = time.perf_counter() - started
        if self.payload is not None and progress.step == steps_at_start:
            self.log(f"nothing to do: {self.last_path} is already at step {progress.step}")
        files.release(self.out_dir)  # (a run that raises: run_cli or the process's end does)
        return {
            "steps": progress.step,
            "stop_reason": reason,
            "best_scores": progress.best_scores,
            "best_step": progress.best_step,
            "last_scores": progress.last_scores,
            "throughput": items_total * self.dist.world_size / train_time
            if train_time > 0
            else 0.0,
            "throughput_unit": unit,
            "time_s": train_time,  # this call's
            "run_time_s": elapsed_before + train_time,  # the run's, resumes included
            "elapsed_s": progress.elapsed_s,
            "device": str(self.device),
            "precision": self.precision.name,
            "world_size": self.dist.world_size,
            "is_main": main,
            "losses": call_losses,
            "metrics": read_metrics(metrics.path) if main else [],
            "out_dir": str(self.out_dir),
            "last_checkpoint": str(self.last_path),
            "best_checkpoint": str(self.best_path),
        }

    # --- helpers ------------------------------------------------------------------------------

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = None
        if self.device.type == "cuda":
            ids = [self.device.index]
            # Trainable batch norm normalises over the global batch, not each process's share
            # (in place: the parameters, and so the optimizer's references, stay the same).
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=ids)

    def _figure_means(self, figures: dict[str, list[float]]) -> dict[str, float]:
        """Each figure's mean over the window's steps (and over the processes under torchrun)."""
        if not figures:
            return {}
        names = sorted(figures)
        means = torch.tensor(
            [sum(figures[n]) / len(figures[n]) for n in names], dtype=torch.float64
        )
        if self.dist.enabled:
            means = self.dist.all_reduce_sum(means.to(self.device)).cpu() / self.dist.world_size
        return {name: round(float(value), 6) for name, value in zip(names, means, strict=True)}

    @staticmethod
    def _reduce_means(
        pending: list[list[float]], count: float | None = None
    ) -> tuple[float, float]:
        """Mean loss and gradient norm over the pending steps (already means over the
        processes); ``count`` gives the number of steps when ``pending`` holds sums."""
        count = len(pending) if count is None else count
        if count == 0:
            return math.nan, math.nan
        return sum(p[0] for p in pending) / count, sum(p[1] for p in pending) / count

    def _agree(self, *flags: bool) -> list[bool]:
        """Each flag true if it is true on any process (a no-op in one process)."""
        return self._agree_clock(0.0, *flags)[1]

    def _agree_clock(self, seconds: float, *flags: bool) -> tuple[float, list[bool]]:
        """The processes' mean of ``seconds``, and each flag true if it is true on any process,
        in one all-reduce (a no-op in one process)."""
        if not self.dist.enabled:
            return seconds, list(flags)
        votes = self.dist.all_reduce_sum(
            torch.tensor([seconds, *map(float, flags)], dtype=torch.float64, device=self.device)
        ).tolist()
        return votes[0] / self.dist.world_size, [vote > 0 for vote in votes[1:]]

    def _non_finite_message(
        self, bad_step: int, what: str, value: float, saved_step: int | None
    ) -> str:
        if saved_step is not None:
            saved = (
                f"the last good checkpoint is {self.last_path} (step {saved_step}); lower "
                f"train.lr or set train.grad_clip, then resume with {self.resume_flag} or start "
                "afresh"
            )
        else:
            saved = (
                "no checkpoint was written yet; lower train.lr or set train.grad_clip and start "
                "again (with --overwrite)"
            )
        return f"the {what} became {value} at step {bad_step}; nothing was saved after it, {saved}"

    def _payload(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        datas: list[dict[str, Any]],
        rngs: list[Any],
        card: dict[str, Any],
        extra: Callable[[], dict[str, Any]] | None,
    ) -> dict[str, Any]:
        progress = self.progress
        payload = {
            "format_version": RUN_FORMAT,
            "task": self.task,
            "config": self.config,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "data": datas,
            "progress": asdict(progress),
            "rng": rngs,
            "step": progress.step,
            "best_scores": progress.best_scores,
            "card": {
                "task": self.task,
                **card,
                "steps": progress.step,
                "best_scores": progress.best_scores,
                "best_step": progress.best_step,  # where they were scored (last.pt: maybe before)
                "trained_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "precision": self.precision.name,  # what train.precision resolved to (auto)
            },
        }
        if extra is not None:
            payload.update(extra())
        return payload
