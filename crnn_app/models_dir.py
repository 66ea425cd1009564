"""The app's models directory: where it is, what checkpoints it holds, which paths may be loaded.

The app lists every ``*.pt`` file under the models directory (recursively, so a training run's
``best.pt`` / ``last.pt`` show up), groups the readable checkpoints by task and reports the others
as skipped with a one-line reason. Only files that resolve inside the models directory can be
loaded: a symlink or a crafted name that points elsewhere is refused.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from captioner.config import CaptionerConfig
from captioner.model import CaptionModel
from char_lm.config import CharLMConfig
from char_lm.model import CharLM
from crnn_app.cards import best_elsewhere, best_val_loss, model_card
from recurrent.checkpoint import check_state_dict, is_utf8, load_checkpoint, shown_name
from recurrent.config import from_dict
from recurrent.errors import UserError, shown

ENV_VAR = "CRNN_MODELS_DIR"
TASKS = ("captioner", "char_lm")
TASK_NAMES = {"captioner": "image captioner", "char_lm": "character-level language model"}


@dataclass(frozen=True)
class AppArgs:
    models_dir: Path
    device: str


def parse_app_args(
    argv: Sequence[str], environ: Mapping[str, str], default_models_dir: Path
) -> AppArgs:
    """The app's own options: ``streamlit run app.py -- --models-dir DIR [--device cpu]``.

    The models directory is, in order of precedence: ``--models-dir``, the environment variable
    ``CRNN_MODELS_DIR``, then ``default_models_dir``. Unknown arguments are ignored (the script may
    run under another program's argv, e.g. pytest's).
    """
    parser = argparse.ArgumentParser(
        prog="streamlit run app.py --",
        description="Streamlit app: caption images and generate text with this project's models.",
        add_help=False,
    )
    parser.add_argument(
        "--models-dir",
        default=None,
        help=f"folder searched (recursively) for *.pt checkpoints; default: ${ENV_VAR} if set, "
        f"else {default_models_dir}",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="device the models run on: cpu (default), cuda or auto",
    )
    args, _unknown = parser.parse_known_args(list(argv))
    chosen = args.models_dir or environ.get(ENV_VAR) or default_models_dir
    return AppArgs(models_dir=Path(chosen).expanduser(), device=args.device)


def demo_models_command(models_dir: Path, default_models_dir: Path | None = None) -> str:
    """The command that writes the bundled demo models into ``models_dir``: `make demo-models`
    writes them into the default folder (the repository's ``models/``), another folder needs its
    MODELS_DIR (absolute: make runs in the repository)."""
    if default_models_dir is not None and os.path.abspath(models_dir) == os.path.abspath(
        default_models_dir
    ):
        return "make demo-models"
    return f"make demo-models MODELS_DIR={shlex.quote(os.path.abspath(models_dir))}"


def check_models_dir(models_dir: Path, default_models_dir: Path | None = None) -> None:
    """Raise `UserError` when the models directory is missing or is not a folder."""
    if not models_dir.exists():
        command = demo_models_command(models_dir, default_models_dir)
        raise UserError(
            f"models directory '{models_dir}' does not exist; run `{command}` to create the "
            f"bundled models there, or point --models-dir / ${ENV_VAR} at a folder of checkpoints"
        )
    if not models_dir.is_dir():
        raise UserError(
            f"models directory '{models_dir}' is a file; point --models-dir / ${ENV_VAR} at a "
            "folder of checkpoints"
        )


def checkpoint_path(models_dir: Path, name: str | os.PathLike[str]) -> Path:
    """The resolved path of checkpoint ``name`` (relative to ``models_dir``), if it may be loaded.

    Raises `UserError` unless the path, with every symlink and ``..`` resolved, is a ``.pt`` file
    inside the models directory: the app never loads a file from anywhere else.
    """
    root = models_dir.resolve()
    try:
        path = (models_dir / name).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise UserError(
            f"checkpoint '{os.fspath(name)}' is a symlink loop; pick one of the listed checkpoints"
        ) from None
    if not path.is_relative_to(root):
        raise UserError(
            f"checkpoint '{os.fspath(name)}' lies outside the models directory '{root}'; copy it "
            "into the models directory (or point --models-dir at its folder) to load it"
        )
    if path.suffix != ".pt" or not path.is_file():
        raise UserError(
            f"checkpoint '{os.fspath(name)}' is not a .pt file in the models directory '{root}'; "
            "pick one of the listed checkpoints"
        )
    return path


@dataclass(frozen=True)
class CheckpointEntry:
    """A readable checkpoint: its name relative to the models directory, task, a one-line
    summary and its model card (`crnn_app.cards.model_card`)."""

    name: str
    task: str
    summary: str
    card: dict[str, Any] = field(default_factory=dict)


@dataclass
class Listing:
    """What the models directory holds: loadable checkpoints and skipped files with reasons."""

    entries: list[CheckpointEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, one-line reason)
    truncated: bool = False  # more files than the listing shows

    def for_task(self, task: str) -> list[CheckpointEntry]:
        return [entry for entry in self.entries if entry.task == task]


def file_key(path: Path) -> tuple[int, int]:
    """(mtime in ns, size): changes whenever the file is rewritten, so caches keyed on it refresh."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def describe_checkpoint(path: str | os.PathLike[str]) -> tuple[str, str, dict[str, Any]]:
    """(task, summary, card) of a checkpoint file, or `UserError` when it is broken or foreign, or
    its weights do not fit its config (so a tampered file is listed as unreadable, not offered)."""
    payload = load_checkpoint(path, mmap=True)  # every check, but no copy of the weights
    task = payload.get("task")
    if task not in TASKS:
        raise UserError(f"a checkpoint for an unknown task {shown(task)}; the app serves {TASKS}")
    check_weights_fit(payload, path)
    card = model_card(payload)
    return task, _summary(payload, best_elsewhere(card)), card


def check_weights_fit(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """`UserError` unless the checkpoint's tensors are the ones its config's model has, shape for
    shape. The model is built on the meta device: no memory, no weights, no download."""
    try:
        with torch.device("meta"):
            if payload["task"] == "captioner":
                cfg = from_dict(CaptionerConfig, payload["config"])
                cfg.model.weights = None  # the architecture only: the checkpoint has every weight
                model = CaptionModel(cfg, len(payload["vocab"]))
            else:
                model = CharLM(
                    from_dict(CharLMConfig, payload["config"]).model, len(payload["vocab"])
                )
    except UserError as err:
        raise UserError(f"{path}'s config does not fit this version: {err}") from None
    except (ValueError, RuntimeError, TypeError) as err:  # e.g. a negative size in an edited file
        raise UserError(f"{path}'s config describes no model this version builds ({err})") from None
    check_state_dict(model.state_dict(), payload["model"], path)


def _summary(payload: dict[str, Any], best_step: int | None = None) -> str:
    """One line about a checkpoint: model, training step and best score (and ``best_step``, the
    step it was measured at where that is another: `best_elsewhere`), where recorded."""
    config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    model = config.get("model", {}) if isinstance(config.get("model"), dict) else {}
    parts = [TASK_NAMES[payload["task"]]]
    cell = model.get("cell")
    if cell:
        size = model.get("hidden_size")
        parts.append(f"{cell}" + (f" {size}" if size else ""))
    if payload["task"] == "captioner" and "attention" in model:
        attention = "top-down attention" if model.get("top_down") else "attention"
        parts.append(attention if model["attention"] else "no attention")
    vocab = payload.get("vocab")
    if isinstance(vocab, list):
        parts.append(f"{len(vocab)} tokens")
    step = payload.get("step")
    if isinstance(step, int):
        parts.append(f"step {step}")
    at = "" if best_step is None else f" (best, at step {best_step})"
    scores = payload.get("best_scores")
    if isinstance(scores, dict) and isinstance(scores.get("BLEU-4"), float):
        parts.append(f"val BLEU-4 {scores['BLEU-4']:.1f}{at}")
    val_loss = best_val_loss(payload)
    if val_loss is not None:
        parts.append(f"val loss {val_loss:.3f} nats/char{at}")
    return ", ".join(parts)


# Folders never searched: hidden ones, and the captioner's feature caches (shards under
# <run>/features/<fingerprint>/, marked by a meta.json). A folder is known by its marker, not
# its name: a run the user named "features" is listed.
FEATURE_CACHE_MARKER = "meta.json"


def walk_models_dir(models_dir: Path) -> Iterator[tuple[Path, list[str]]]:
    """(folder, file names) for ``models_dir`` and every folder below it that is searched.

    Symlinked folders are not followed; hidden folders and feature caches are not searched.
    """
    for folder, subfolders, files in os.walk(models_dir):
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not name.startswith(".") and not _is_feature_cache(Path(folder) / name)
        )
        yield Path(folder), files


def _is_feature_cache(folder: Path) -> bool:
    try:
        return (folder / FEATURE_CACHE_MARKER).is_file()
    except OSError:  # a folder this user may not search (another user's 0700 run): os.walk
        return False  # skips what it cannot list


MAX_FILES = 200  # checkpoint files the app lists (each is read and checked)


def _written(path: Path) -> int:
    """When ``path`` was last written (ns), for `find_checkpoint_files` to keep the latest; a
    broken link or a link loop (listed, as such) counts as its link, else as oldest."""
    for look in (path.stat, path.lstat):
        try:
            return look().st_mtime_ns
        except (OSError, RuntimeError):
            continue
    return 0


def find_checkpoint_files(models_dir: Path, max_files: int = MAX_FILES) -> tuple[list[Path], bool]:
    """``*.pt`` files under ``models_dir`` (sorted), and whether the list was cut at
    ``max_files``: where there are more, the ``max_files`` written last (a folder of many runs:
    the latest are the ones to serve; the first ones by name hid the newest, as on the curves
    page before).

    Searched as `walk_models_dir` walks.
    """
    found: list[Path] = []
    for folder, files in walk_models_dir(models_dir):
        found.extend(folder / name for name in files if name.endswith(".pt"))
    found.sort()
    if len(found) <= max_files:
        return found, False
    latest = sorted(found, key=lambda path: (_written(path), path), reverse=True)[:max_files]
    return sorted(latest), True


def list_checkpoints(
    models_dir: Path, describe: Any = describe_checkpoint, max_files: int = MAX_FILES
) -> Listing:
    """All checkpoint files under ``models_dir`` (see `find_checkpoint_files`), read with ``describe``.

    ``describe(path) -> (task, summary, card)`` raises `UserError` for an unusable file (the app passes a
    cached version). Files that resolve outside the models directory are skipped unread.
    """
    listing = Listing()
    root = models_dir.resolve()
    paths, truncated = find_checkpoint_files(models_dir, max_files)
    for path in paths:
        name = path.relative_to(models_dir).as_posix()
        if not is_utf8(name):  # a name that is not UTF-8: Streamlit cannot send it
            listing.skipped.append((shown_name(name), "has a name that is not UTF-8; rename it"))
            continue
        try:
            target = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            listing.skipped.append((name, "is a symlink loop, so it is never loaded"))
            continue
        if not target.is_relative_to(root):
            listing.skipped.append(
                (name, "points outside the models directory, so it is never loaded")
            )
            continue
        if not path.is_file():  # a symlink to nothing
            listing.skipped.append((name, "is a broken symlink (its target is missing)"))
            continue
        if target.suffix != ".pt":  # `checkpoint_path` refuses it: skipped, not raised
            listing.skipped.append(
                (name, "links to a file that is not a .pt checkpoint, so it is never loaded")
            )
            continue
        resolved = checkpoint_path(models_dir, name)
        try:
            task, summary, card = describe(resolved)
        except UserError as err:  # messages name the file by its full path: the name is shorter
            reason = " ".join(str(err).replace(str(resolved), name).split())
            listing.skipped.append((name, reason))
            continue
        except OSError as err:  # e.g. a file removed or made unreadable while listing
            listing.skipped.append((name, f"cannot be read ({err.strerror or err})"))
            continue
        listing.entries.append(CheckpointEntry(name=name, task=task, summary=summary, card=card))
    listing.truncated = truncated
    return listing
