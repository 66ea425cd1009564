"""Train a character-level language model with truncated backpropagation through time.

    python -m char_lm.train --config configs/char_lm/ship.yaml [--set key=value ...]
                            [--out-dir DIR] [--resume [auto]] [--overwrite]
    torchrun --standalone --nproc_per_node=2 -m char_lm.train --config ...   (several processes)

The training text is cut into ``data.batch_size`` contiguous streams walked in windows of
``data.block_size`` characters (`char_lm.data.StreamBatches`); the hidden state at the end of a
window starts the next window of the same stream, detached, and is reset when the walk wraps
around, and at random with chance ``data.state_reset`` per stream and window, so that the model
also learns to read from a zero state, which is where a prompt or a text to score starts. Under
torchrun each process trains on its own ``batch_size / N`` of the streams.

The run itself (learning-rate schedule, time budget, evaluation, checkpoints, resume, signals,
metrics.jsonl) follows the rules of `recurrent.engine`, the same for both tasks: see the README's
"How a run works". Evaluation is the validation loss in nats/char over ``train.eval_batches``
windows of the held-out text; ``best.pt`` keeps the lowest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from char_lm.config import (
    BOUNDS,
    OLDER_DEFAULTS,
    CharLMConfig,
    architecture_keys,
    check_config,
    describe_data,
    describe_model,
)
from char_lm.data import StreamBatches, load_corpus
from char_lm.model import CharLM
from char_lm.scoring import evaluate_text
from recurrent.config import (
    add_run_arguments,
    load_config,
    older_defaults,
    run_dir,
    run_options,
    to_dict,
)
from recurrent.distributed import Distributed, finish
from recurrent.engine import Resume, Run, StepResult
from recurrent.errors import TRAINING_STOPPED, ArgumentParser, UserError, run_cli

TASK = "char_lm"
# what to lower when a run runs out of memory (`run_cli`'s ``memory``)
MEMORY = (
    "lower data.batch_size (raising train.grad_accum_steps as much keeps each step's batch), "
    "data.block_size or the model's size"
)
LN2 = math.log(2)


class StreamWalk:
    """This process's streams of the training text, walked window by window with the hidden state
    carried; its position and carried state are part of the checkpoint."""

    def __init__(
        self,
        batches: StreamBatches,
        layout: Distributed,
        block_size: int,
        *,
        fp32: bool,
        state_reset: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.all_streams = batches.streams
        self.rows = layout.shard(batches.streams, "data.batch_size")
        self.is_main, self.fp32 = layout.is_main, fp32
        self.batches = batches.select_streams(self.rows)  # (B / N) streams of this process
        self.windows, self.block_size = len(batches), block_size
        self.state_reset, self.seed = state_reset, seed
        self.position = 0
        self.walked = 0  # windows walked in this run: what the state resets are drawn from
        self.state: Tensor | None = None  # (S, L, B / N, H), carried across windows

    def next_window(self) -> tuple[Tensor, Tensor, bool]:
        """(inputs, targets) of the next window, each (B / N, T) int64, and whether it ends a pass."""
        if self.position == 0:
            self.state = None  # a new pass over the streams starts from a zero state
        elif self.state is not None and self.state_reset > 0:
            self.state = self.state * self.kept_streams().view(1, 1, -1, 1)
        inputs, targets = self.batches.window(self.position)
        self.position = (self.position + 1) % self.windows
        self.walked += 1
        return inputs, targets, self.position == 0

    def kept_streams(self) -> Tensor:
        """(B / N,) 1 where this process's streams keep their state into the next window, 0 where
        it restarts from zero (chance ``data.state_reset`` each). The draws depend only on the seed,
        the window count and the stream's place in the whole batch, not on how many processes share
        the streams, so a run under torchrun resets the same streams as one process would."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.walked)
        keep = torch.rand(self.all_streams, generator=generator) >= self.state_reset
        return keep[self.rows].to(self.state.device, self.state.dtype)

    def layout(self) -> tuple[int, int, int]:
        return self.batches.streams, self.block_size, self.windows

    def state_dict(self) -> dict[str, Any]:
        streams, block_size, windows = self.layout()
        state = None if self.state is None else self.state.detach().cpu()
        return {
            "streams": streams,
            "block_size": block_size,
            "windows": windows,
            "position": self.position,
            "walked": self.walked,
            "state": state,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """This process's share of a run written by as many processes."""
        self._restore([saved], own=True)

    def load_state_dicts(self, saved: list[dict[str, Any]]) -> None:
        """The shares of a run written by another number of processes: each held a contiguous
        share of the streams (`Distributed.shard`), all at one position, so joined in rank order
        they are the whole batch's, of which this process takes its own."""
        self._restore(saved, own=False)

    def _restore(self, saved: list[dict[str, Any]], *, own: bool) -> None:
        """Raises ValueError for shares no run writes (an edited checkpoint): the engine says so
        in one line."""
        _check_shares(saved)
        first = saved[0]
        streams = sum(part["streams"] for part in saved)
        layout = (self.batches.streams if own else self.all_streams, self.block_size, self.windows)
        position = first["position"]
        if (streams, first["block_size"], first["windows"]) != layout:
            position = self._carried(streams, layout[0], first)
            if position is None:
                if self.is_main:
                    tqdm.write(
                        "note: data.batch_size or data.block_size changed; the streams restart "
                        "from the beginning of the text"
                    )
                return
            if self.is_main:
                tqdm.write(
                    f"note: data.block_size changed from {first['block_size']} to "
                    f"{self.block_size}; the streams go on from the same character, with their "
                    f"state (window {position + 1} of {self.windows})"
                )
        self.position = position
        self.walked = first.get("walked", 0)  # checkpoints before data.state_reset: none
        states = [part["state"] for part in saved]
        if any(state is None for state in states):  # none carried yet: a pass's start
            return
        state = torch.cat(states, dim=2)  # (S, L, streams, H)
        if not own:
            state = state[:, :, self.rows]
        device = self.batches.ids.device  # a bf16 state of a mixed-precision run: float32 here
        self.state = state.to(device).float() if self.fp32 else state.to(device)

    def _carried(self, streams: int, own_streams: int, first: dict[str, Any]) -> int | None:
        """This block size's window at which a position saved with another one lies: the same
        streams of the same text (each as long), and the characters walked so far a whole number
        of the new windows (a block size halved or doubled from a pass's start, say). None where
        the position falls inside a window, or the streams differ."""
        length = self.batches.stream_length
        if streams != own_streams or first["windows"] != -(-length // first["block_size"]):
            return None
        walked = first["position"] * first["block_size"]
        return None if walked % self.block_size else walked // self.block_size


def _check_shares(saved: list[dict[str, Any]]) -> None:
    """The saved shares of the streams are what `StreamWalk.state_dict` writes: whole numbers,
    a position within its pass, the same place and window in every share, and states of the
    (S, L, streams, H) shape, alike but for their streams, or none."""
    if not saved:
        raise ValueError("no share of the streams")
    for part in saved:
        counts = [part[key] for key in ("streams", "block_size", "windows", "position")]
        counts.append(part.get("walked", 0))
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in counts):
            raise ValueError("stream counts that are not whole numbers")
        if part["block_size"] < 1:  # no run walks windows of no characters (0 would divide)
            raise ValueError("a window of no characters")
        if part["position"] >= max(part["windows"], 1):
            raise ValueError("a stream position beyond its pass")
        state = part["state"]
        if state is not None and not (
            isinstance(state, torch.Tensor)
            and state.dim() == 4
            and state.size(2) == part["streams"]
        ):
            raise ValueError("a carried state of another shape than its streams'")
    places = {(p["position"], p["block_size"], p["windows"], p.get("walked", 0)) for p in saved}
    shapes = {
        tuple(p["state"].shape[:2] + p["state"].shape[3:]) for p in saved if p["state"] is not None
    }
    if len(places) > 1 or len(shapes) > 1:
        raise ValueError("shares of the streams at different places, or of other shapes")


def _fmt(loss: float) -> str:
    return f"{loss:.4f} nats/char ({loss / LN2:.4f} bpc)"


def train(
    cfg: CharLMConfig,
    out_dir: str | Path,
    resume: Resume = False,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) a model into ``out_dir``; returns the engine's summary
    plus best_val_loss, final_train_loss, final_val_loss (nats/char), chars_per_s, parameters and
    history (one {step, train_loss, val_loss} per evaluation of the whole run)."""
    check_config(cfg)
    tc = cfg.train
    run = Run(
        out_dir,
        task=TASK,
        settings=tc,
        config=to_dict(cfg),
        defaults=older_defaults(CharLMConfig(), OLDER_DEFAULTS),  # an older checkpoint's
        resume=resume,
        overwrite=overwrite,
        quiet=quiet,
        init_from=init_from,
    )

    # --- data: the text (read in chunks into ids of the smallest dtype), its vocabulary, this
    # process's training streams, the validation text
    corpus = load_corpus(cfg.data)
    vocab, train_ids, val_ids = corpus.vocab, corpus.train_ids, corpus.val_ids
    split = cfg.data.val_fraction > 0
    batches = StreamBatches(
        train_ids,
        cfg.data.batch_size,
        cfg.data.block_size,
        what="training split" if split else "training text",
        longer="use a longer text or lower data.val_fraction" if split else "use a longer text",
        processes=run.dist.world_size,
    )
    walk = StreamWalk(
        batches.to(run.device),
        run.dist,
        cfg.data.block_size,
        fp32=run.precision.name == "fp32",
        state_reset=cfg.data.state_reset,
        seed=tc.seed,
    )
    val_ids = val_ids.to(run.device)
    saved_config = run.payload["config"] if run.payload else run.config
    keys = architecture_keys(run.config, saved_config)
    # the network first, then the text; the validation text (which and how much of it) is the
    # best score's measure
    kept = ["data.val_fraction", "train.eval_batches"]
    run.check_same_data(lambda: corpus.fingerprint, f"the training text ({corpus.source})")
    run.check_resume(keys, vocab, "the text's characters", resume_keys=kept)
    if (
        run.payload
        and run.payload.get("data_fingerprint", corpus.fingerprint) != corpus.fingerprint
    ):
        trained_on = saved_config.get("data", {}).get("path", cfg.data.path)
        problem = (
            f"the training text {corpus.source} changed since the run started (its sha256 "
            "differs); restore that text"
            if trained_on == cfg.data.path
            else f"it was trained on {trained_on or 'the downloaded text'}, and {corpus.source} "
            f"is another text; pass --set data.path={trained_on}"
        )
        raise UserError(
            f"cannot resume from {run.last_path}: {problem}, or start a new run with "
            "--overwrite or another --out-dir"
        )

    # The validation layout (streams from a zero state, windows) is the best score's measure too:
    # a resume with another data.batch_size or data.block_size trains in the new layout but
    # validates in the run's own, so best.pt compares losses of the same characters.
    configured = {"streams": cfg.data.batch_size, "block_size": cfg.data.block_size}
    val_layout = configured
    if run.payload is not None:
        saved_data = saved_config.get("data", {})
        val_layout = run.payload.get("val_layout") or {
            "streams": saved_data.get("batch_size", cfg.data.batch_size),
            "block_size": saved_data.get("block_size", cfg.data.block_size),
        }
        if val_layout != configured:
            run.log(
                f"note: validation keeps this run's {val_layout['streams']} streams of "
                f"{val_layout['block_size']}-character windows (data.batch_size and "
                "data.block_size set what it scores), so its losses compare with the earlier ones"
            )

    # --- model and optimizer (embeddings do not decay: `recurrent.engine.parameter_groups`)
    model = CharLM(cfg.model, len(vocab)).to(run.device)
    optimizer = run.optimizer([("model", model, tc.lr)])
    run.restore(model, optimizer, walk)
    parameters = sum(p.numel() for p in model.parameters())
    run.log(
        f"data: {corpus.chars:,} characters, vocabulary {len(vocab)}, train {len(train_ids):,}, "
        f"val {len(val_ids):,}{' (= train)' if cfg.data.val_fraction == 0 else ''}; "
        f"model: {parameters:,} parameters; device: {run.device}, {run.precision.name}"
        + (f", {run.dist.world_size} processes" if run.dist.enabled else "")
    )

    # --- one step and one evaluation; the engine does the rest
    def step(net: nn.Module) -> StepResult:
        inputs, targets, epoch_end = walk.next_window()  # (B / N, T) each
        _, loss, state = net(inputs, targets, walk.state)
        walk.state = state.detach()  # truncated BPTT: carry the state, not its graph
        return StepResult(loss, inputs.numel(), epoch_end)

    def evaluate(net: nn.Module) -> dict[str, float]:
        loss, _ = evaluate_text(
            net,
            val_ids,
            val_layout["block_size"],
            streams=val_layout["streams"],
            max_windows=tc.eval_batches,
            what="validation text",
        )
        return {"val_loss": loss}

    architecture = describe_model(to_dict(cfg.model))
    summary = run.fit(
        model,
        optimizer,
        walk,
        step=step,
        evaluate=evaluate,
        score_key=lambda scores: (-scores["val_loss"],),
        total_steps=tc.max_steps,
        unit="chars/s",
        card={
            "architecture": architecture,
            "data": {**describe_data(to_dict(cfg.data)), "size": len(train_ids)},
        },
        extra=lambda: {
            "vocab": vocab,
            "data_fingerprint": corpus.fingerprint,
            "val_layout": val_layout,
            "best_val_loss": (run.progress.best_scores or {}).get("val_loss", math.inf),
        },
        describe=lambda scores: f"val {_fmt(scores['val_loss'])}",
    )
    history = [
        {"step": r["step"], "train_loss": r["train_loss"], "val_loss": r["scores"]["val_loss"]}
        for r in summary["metrics"]
        if r["kind"] == "eval"
    ]
    return {
        **summary,
        "best_val_loss": summary["best_scores"]["val_loss"],
        "final_train_loss": history[-1]["train_loss"] if history else math.nan,
        "final_val_loss": summary["last_scores"]["val_loss"],
        "chars_per_s": summary["throughput"],
        "parameters": parameters,
        "history": history,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m char_lm.train",
        description="Train a character-level language model (RNN / LSTM / GRU) on a text.",
    )
    add_run_arguments(parser, "char_lm", "configs/char_lm/shakespeare.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(CharLMConfig, args.config, args.overrides, bounds=BOUNDS)
    out_dir = run_dir("char_lm", args.config, args.out_dir)
    summary = train(cfg, out_dir, **run_options(args))
    if summary["is_main"]:  # under torchrun, rank 0 reports
        # a call that trained no step ("nothing to do") has no rate (it said 0 chars/s)
        rate = f"{summary['chars_per_s']:,.0f} chars/s; " if summary["losses"] else ""
        print(
            f"done: {summary['steps']} steps (stopped by {summary['stop_reason']}), "
            f"{rate}best val {_fmt(summary['best_val_loss'])}; "
            f"checkpoints in {out_dir} (last.pt, best.pt)"
        )


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2; a
    torchrun worker ends through `recurrent.distributed.finish`."""
    raise SystemExit(finish(run_cli(main, stopped=TRAINING_STOPPED, memory=MEMORY)))


if __name__ == "__main__":
    cli()
