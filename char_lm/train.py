"""Train a character-level language model with truncated backpropagation through time.

    python -m char_lm.train --config configs/char_lm/ship.yaml [--set key=value ...]
                            [--out-dir DIR] [--resume]

The training text is cut into ``data.batch_size`` contiguous streams walked in windows of
``data.block_size`` characters (`char_lm.data.StreamBatches`); the hidden state at the end of a
window starts the next window of the same stream, detached, and is reset when the walk wraps
around. The learning rate warms up linearly for ``train.warmup_steps`` and then follows a cosine
down to ``lr * min_lr_ratio``: over ``train.lr_decay_steps`` (default ``train.max_steps``) steps,
or, when only ``train.time_budget_s`` is set, over the budget by the fraction of training time
elapsed. With both a step limit and a time budget, training stops at whichever comes first.

Every ``train.eval_every`` steps (and at the end) it prints the mean training loss since the last
evaluation and the validation loss, in nats/char and bits/char, and writes ``DIR/last.pt``; the
best validation loss so far is also written to ``DIR/best.pt``. ``--resume`` continues from
``DIR/last.pt`` exactly where it stopped: weights, optimizer, schedule, random-number state, data
position and the carried hidden state are all in the checkpoint, so 20 steps and a resume to 40 is
the same run as 40 steps in one go.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from char_lm.config import CharLMConfig, TrainConfig, architecture_keys, check_config
from char_lm.data import StreamBatches, load_corpus
from char_lm.generate import read_checkpoint
from char_lm.model import CharLM
from char_lm.scoring import evaluate_text
from recurrent.checkpoint import check_same_architecture, save_checkpoint
from recurrent.config import add_run_arguments, load_config, run_dir, to_dict
from recurrent.errors import UserError, run_cli
from recurrent.training import (
    autocast,
    pick_device,
    rng_state,
    set_rng_state,
    set_seed,
    warmup_cosine,
)

LN2 = math.log(2)
TIME_RESOLUTION = 10_000  # the cosine over a time budget moves in steps of 1/10000 of it


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or RMSprop; weight decay only on matrices (weights, embeddings), not on biases."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    if config.optimizer == "rmsprop":  # char-rnn: RMSprop with decay rate 0.95
        return torch.optim.RMSprop(groups, lr=config.lr, alpha=0.95)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))


def lr_schedule(config: TrainConfig, clock: dict[str, float]) -> Callable[[int], float]:
    """The LR multiplier for LambdaLR: warmup, then a cosine by steps or by time.

    A closure (not an object) so LambdaLR's state_dict holds no schedule settings and a resume
    follows the config it is given. ``clock["fraction"]`` is the fraction of the time budget used,
    which the training loop updates; it is read only when no step count is set.
    """
    total_steps = config.lr_decay_steps or config.max_steps

    def multiplier(step: int) -> float:
        if total_steps > 0:
            return warmup_cosine(
                step,
                warmup_steps=config.warmup_steps,
                total_steps=total_steps,
                min_ratio=config.min_lr_ratio,
            )
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return warmup_cosine(
            round(clock["fraction"] * TIME_RESOLUTION),
            warmup_steps=0,
            total_steps=TIME_RESOLUTION,
            min_ratio=config.min_lr_ratio,
        )

    return multiplier


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings mean what they say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fmt(loss: float) -> str:
    return f"{loss:.4f} nats/char ({loss / LN2:.4f} bpc)"


def train(
    cfg: CharLMConfig, out_dir: str | Path, resume: bool = False, *, overwrite: bool = False
) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) a model into ``out_dir``; returns a summary dict.

    Summary keys: steps, best_val_loss, final_train_loss, final_val_loss (nats/char), chars_per_s
    (training characters per second of training time in this call), elapsed_s (training time over
    all calls), parameters, history (a list of {step, train_loss, val_loss}, one per evaluation),
    last_checkpoint, best_checkpoint. Without ``resume``, an ``out_dir`` that already holds a run is
    refused unless ``overwrite``.
    """
    check_config(cfg)
    tc = cfg.train
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    device = pick_device(tc.device)

    corpus = load_corpus(cfg.data)  # ids in the smallest dtype, read from the file in chunks
    vocab, train_ids, val_ids = corpus.vocab, corpus.train_ids, corpus.val_ids
    batches = StreamBatches(
        train_ids,
        cfg.data.batch_size,
        cfg.data.block_size,
        what="training text" if cfg.data.val_fraction == 0 else "training split",
    ).to(device)
    val_ids = val_ids.to(device)

    payload = None
    if resume:
        if not last_path.is_file():
            raise UserError(
                f"nothing to resume: {last_path} not found; drop --resume to start a run"
            )
        payload = read_checkpoint(last_path)
        config_dict = to_dict(cfg)
        keys = architecture_keys(config_dict, payload["config"]) + ["train.optimizer"]
        check_same_architecture(payload["config"], config_dict, keys, last_path)
        if payload.get("data_fingerprint", corpus.fingerprint) != corpus.fingerprint:
            raise UserError(
                f"cannot resume from {last_path}: the training text {corpus.source} changed since "
                f"the run started (its sha256 differs); restore that text, or start a new run "
                f"with --overwrite or another --out-dir"
            )
        if list(payload["vocab"]) != vocab:
            raise UserError(
                f"cannot resume from {last_path}: the text's characters differ from the "
                f"checkpoint's vocabulary; train on the same text or drop --resume"
            )
    elif last_path.exists() and not overwrite:
        raise UserError(
            f"{out_dir} already holds a run ({last_path}); pass --resume to continue it, "
            f"--overwrite to replace it, or another --out-dir"
        )

    set_seed(tc.seed)
    model = CharLM(cfg.model, len(vocab)).to(device)
    optimizer = build_optimizer(model, tc)
    clock = {"fraction": 0.0}
    schedule = lr_schedule(tc, clock)
    scheduler = LambdaLR(optimizer, schedule)
    step, best_val, elapsed, position, state = 0, math.inf, 0.0, 0, None
    history: list[dict[str, float]] = []
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        step, best_val = payload["step"], payload["best_val_loss"]
        elapsed, history = payload["elapsed_s"], list(payload["history"])
        stream = payload["stream"]
        saved_layout = (stream["batch_size"], stream["block_size"], stream["windows"])
        if saved_layout == (batches.streams, cfg.data.block_size, len(batches)):
            position = stream["position"]
            state = None if stream["state"] is None else stream["state"].to(device)
            if state is not None and device.type != "cuda":
                state = state.float()  # a bf16 state from a CUDA run, resumed on the CPU
        else:
            tqdm.write("note: data.batch_size or data.block_size changed; streams restart")
        # The config's learning rate and weight decay win over the checkpoint's (same if unchanged).
        clock["fraction"] = elapsed / tc.time_budget_s if tc.time_budget_s else 0.0
        scheduler.base_lrs = [tc.lr for _ in optimizer.param_groups]
        for group, decay in zip(optimizer.param_groups, (tc.weight_decay, 0.0), strict=True):
            group["initial_lr"] = tc.lr
            group["lr"] = tc.lr * schedule(scheduler.last_epoch)
            group["weight_decay"] = decay
        set_rng_state(payload["rng"])

    parameters = sum(p.numel() for p in model.parameters())
    tqdm.write(
        f"data: {corpus.chars:,} characters, vocabulary {len(vocab)}, train {len(train_ids):,}, "
        f"val {len(val_ids):,}{' (= train)' if cfg.data.val_fraction == 0 else ''}; "
        f"model: {parameters:,} parameters; device: {device}"
    )

    def finished() -> bool:
        return (tc.max_steps > 0 and step >= tc.max_steps) or (
            tc.time_budget_s > 0 and elapsed >= tc.time_budget_s
        )

    def checkpoint() -> dict[str, Any]:
        return {
            "task": "char_lm",
            "config": to_dict(cfg),
            "vocab": vocab,
            "data_fingerprint": corpus.fingerprint,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "best_val_loss": best_val,
            "elapsed_s": elapsed,
            "history": history,
            "stream": {
                "batch_size": batches.streams,
                "block_size": cfg.data.block_size,
                "windows": len(batches),
                "position": position,
                "state": None if state is None else state.cpu(),
            },
            "rng": rng_state(),
        }

    running_loss = torch.zeros((), device=device)  # sum of training losses since the last eval
    running_steps = 0

    def evaluate_and_save() -> None:
        nonlocal best_val, running_loss, running_steps
        val_loss, _ = evaluate_text(
            model,
            val_ids,
            cfg.data.block_size,
            streams=cfg.data.batch_size,
            max_windows=tc.eval_batches,
            what="validation text",
        )
        train_loss = running_loss.item() / running_steps if running_steps else math.nan
        running_loss, running_steps = torch.zeros((), device=device), 0
        history.append({"step": step, "train_loss": train_loss, "val_loss": val_loss})
        improved = val_loss < best_val
        best_val = min(best_val, val_loss)
        tqdm.write(
            f"step {step}: train {_fmt(train_loss)}, val {_fmt(val_loss)}"
            + (" (best)" if improved else "")
        )
        payload = checkpoint()
        if improved:
            save_checkpoint(payload, best_path)
        save_checkpoint(payload, last_path)

    params = list(model.parameters())
    steps_at_start, chars = step, 0
    bar = tqdm(
        total=tc.max_steps or None, initial=step, unit="step", desc="train", dynamic_ncols=True
    )
    model.train()
    _sync(device)
    started = time.perf_counter()
    train_seconds = 0.0  # this call's training time, evaluations excluded
    while not finished():
        if position == 0:
            state = None  # a new pass over the streams starts from a zero state
        inputs, targets = batches.window(position)  # (B, T) each
        with autocast(device):
            _, loss, state = model(inputs, targets, state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        state = state.detach()  # truncated BPTT: carry the state, not its graph
        step += 1
        position = (position + 1) % len(batches)
        chars += inputs.numel()
        running_loss += loss.detach()
        running_steps += 1
        now = time.perf_counter()
        elapsed += now - started
        train_seconds += now - started
        started = now
        if tc.time_budget_s:
            clock["fraction"] = min(1.0, elapsed / tc.time_budget_s)
        scheduler.step()
        bar.update(1)
        if step % tc.log_every == 0:  # the only host sync in the loop
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % tc.eval_every == 0 or finished():
            _sync(device)
            now = time.perf_counter()
            elapsed += now - started
            train_seconds += now - started
            evaluate_and_save()
            started = time.perf_counter()
    bar.close()
    if not history:  # nothing trained and nothing saved before (e.g. a zero time budget on resume)
        evaluate_and_save()
    last = history[-1]
    summary = {
        "steps": step,
        "best_val_loss": best_val,
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "chars_per_s": chars / train_seconds if train_seconds > 0 else 0.0,
        "elapsed_s": elapsed,
        "parameters": parameters,
        "history": history,
        "last_checkpoint": str(last_path),
        "best_checkpoint": str(best_path),
    }
    if step == steps_at_start:
        tqdm.write(f"nothing to do: {last_path} is already at step {step}")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m char_lm.train",
        description="Train a character-level language model (RNN / LSTM / GRU) on a text.",
    )
    add_run_arguments(parser, "char_lm", "configs/char_lm/shakespeare.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(CharLMConfig, args.config, args.overrides)
    out_dir = run_dir("char_lm", args.config, args.out_dir)
    summary = train(cfg, out_dir, resume=args.resume, overwrite=args.overwrite)
    print(
        f"done: {summary['steps']} steps, {summary['chars_per_s']:,.0f} chars/s; "
        f"best val {_fmt(summary['best_val_loss'])}; checkpoints in {out_dir} (last.pt, best.pt)"
    )


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
