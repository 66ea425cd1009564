"""Caption images from the command line with a trained checkpoint.

    python -m captioner.caption --checkpoint runs/captioner/scenes_demo/best.pt a.png b.png
    python -m captioner.caption --checkpoint best.pt photos/ "more/*.jpg" --csv captions.csv
    python -m captioner.caption --checkpoint a/best.pt --checkpoint b/best.pt photos/
    find photos -name '*.jpg' -newer last.csv | python -m captioner.caption --checkpoint best.pt \
        --list - --csv new.csv

Each argument is an image file, a folder (every image file in it, by extension, not recursive) or a
glob pattern; ``--list FILE`` (given more than once: each file) adds the lines of a text file
(``-``: the standard input), each taken as an argument. Images are captioned in batches, with a
progress bar on stderr when it is a terminal. Prints one ``path<TAB>caption`` line per image (a
name holding a tab, a line break or a double quote quoted as CSV quotes it), or one JSON object
with --json; --csv also writes ``image,caption`` rows that the training CSV loader reads
(``data.format: csv``), so the captions can be reviewed, corrected and trained on. The CSV is
rewritten every minute while captioning; a stop (SIGTERM, Ctrl-C) writes what was captioned and
says so, and --resume with the same --csv captions only the images the file does not hold yet. A
file named on the command line that cannot be read stops the command; one found in a folder or by a
pattern is reported with a ``warning:`` line on stderr and skipped. With more than one --checkpoint
the images are captioned by their ensemble (`captioner.ensemble`), with the first checkpoint's
decoding settings. The library API (`load_captioner`, `caption_images`, `find_images`,
`caption_files`) lives in `captioner.inference`.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shlex
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from captioner.data.formats import read_csv_rows, tab_separated
from captioner.data.images import ACCEPTED_FORMATS
from captioner.decode import check_decode_settings
from captioner.ensemble import load_ensemble
from captioner.inference import (
    DEFAULT_BATCH_SIZE,
    CaptionResult,
    add_decode_arguments,
    caption_files,
    decode_arguments,
    find_images,
)
from recurrent import files
from recurrent.checkpoint import is_utf8, shown_name
from recurrent.errors import (
    READER_GONE,
    READER_GONE_STATUS,
    ArgumentParser,
    RunStopped,
    UserError,
    drop_unwritable_stdout,
    run_cli,
)
from recurrent.files import atomic_write_text, read_standard_input

CSV_SAVE_EVERY_S = 60.0  # --csv is rewritten this often while captioning (a kill loses the rest)


class _NamedFileStop(UserError):
    """A file named on the command line (or by --list) cannot be read: the command stops, with the
    captions of the images before it (of its batch too) in the --csv file."""


def _result_json(path: str, result: CaptionResult) -> dict[str, Any]:
    return {
        "image": path,
        "caption": result.caption,
        "beams": [
            {"caption": text, "logprob": round(logprob, 4), "finished": ended}
            for (text, logprob), ended in zip(result.beams, result.finished, strict=True)
        ],
    }


def expand_inputs(arguments: Sequence[str]) -> tuple[list[str], set[str]]:
    """(image paths in order without repeats, the paths found in folders or by patterns). One
    file under two spellings (``./a.png`` and its absolute path, a linked folder) is one image,
    under its first."""
    paths: dict[str, str] = {}  # the file itself -> its first spelling
    found: set[str] = set()
    for argument in arguments:
        if os.path.isdir(argument) or (not os.path.exists(argument) and glob.has_magic(argument)):
            images = find_images(argument)
            if not images:
                if os.path.isdir(argument):  # its top level: say how to reach its subfolders
                    quoted = shlex.quote(os.path.join(argument, "**", "*"))
                    where = f"folder '{argument}' holds"
                    with os.scandir(argument) as entries:
                        nested = any(entry.is_dir() for entry in entries)
                    fix = "pass a folder with images" + (
                        f", or {quoted} for those in its subfolders" if nested else ""
                    )
                else:
                    where, fix = (
                        f"pattern '{argument}' matches",
                        "pass a pattern that matches images",
                    )
                raise UserError(
                    f"{where} no image files (.jpg, .png, .webp ... the extensions Pillow opens); "
                    + fix
                )
            found.update(images)
            for image in images:
                paths.setdefault(os.path.realpath(image), image)
        else:
            paths.setdefault(os.path.realpath(argument), argument)
    return list(paths.values()), found - set(arguments)


def read_list(source: str) -> list[str]:
    """The image paths of --list: the lines of a text file, or of the standard input for ``-``,
    blank ones left out (none at all is a UserError, as an empty folder is). Names are read as the
    file system gives them (UTF-8, any other byte kept as Python keeps it in a file name); a line
    ends at LF or CRLF only (a name may hold a form feed or U+2028, which ``str.splitlines`` would
    split at), and a UTF-8 BOM (Notepad's) is dropped. A NUL byte, which no name holds (UTF-16
    text, ``find -print0``), is a UserError."""
    if source == "-":
        what = "the standard input (--list -)"
        data = read_standard_input(what, "image paths, one per line,")
    else:
        what = f"--list {source}"
        data = _read_list_file(what, source)
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
    if "\0" in text:
        number = text[: text.index("\0")].count("\n") + 1
        raise UserError(
            f"{what}: line {number} holds a NUL byte, which no file name does; write the list "
            "as UTF-8 text, one path per line (not UTF-16, not find -print0)"
        )
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UserError(f"{what} names no image; give it image paths, one per line")
    return lines


def _read_list_file(what: str, source: str) -> bytes:
    try:
        with open(source, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        raise UserError(f"{what}: file not found; pass a text file of image paths") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a folder; pass it as an IMAGE argument instead") from None
    except OSError as err:
        raise UserError(f"cannot read {what} ({err.strerror})") from None


def _check_csv_path(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not path:
        raise UserError("--csv is empty; pass the path of the CSV file to write")
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise UserError(f"--csv {path} is a folder; pass the path of the CSV file to write")
    if not os.path.isdir(folder):
        raise UserError(f"--csv {path}: folder '{folder}' does not exist; create it first")


def write_csv(
    path: str, captions: Sequence[tuple[str, str]], splits: Mapping[str, str] | None = None
) -> None:
    """``image,caption`` rows of (image path, caption) pairs, image paths relative to the CSV's
    folder (as `load_csv` reads them); with ``splits`` (image path -> split) a ``split`` column
    too, empty for the images it does not name. Written to a temporary file and renamed."""
    folder = os.path.dirname(os.path.abspath(path))
    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["image", "caption", *(["split"] if splits is not None else [])])
    for image, text in captions:
        try:
            name = os.path.relpath(os.path.abspath(image), folder)
        except ValueError:  # another drive (Windows)
            name = os.path.abspath(image)
        writer.writerow([name, text, *([splits.get(image, "")] if splits is not None else [])])
    atomic_write_text(path, rows.getvalue())


CSV_COLUMNS = ("image", "caption", "split")  # what `load_csv` reads, and --resume keeps


def read_captioned(path: str) -> tuple[list[tuple[str, str]], dict[str, str] | None]:
    """The (absolute image path, caption) rows of a CSV that --csv wrote (`write_csv`), for
    --resume, and its ``split`` column (absolute image path -> split) where the file has one
    (a user may add it before training on the file); none when the file does not exist yet. A
    column --resume would drop, or a row without an image, is refused."""
    if not os.path.exists(path):
        return [], None
    folder = os.path.dirname(os.path.abspath(path))
    try:
        rows = read_csv_rows(Path(path))
    except UserError as err:
        raise UserError(f"--resume: {err} (the CSV --csv wrote has them)") from None
    with open(path, newline="", encoding="utf-8-sig") as stream:
        header = [name.strip().lower() for name in next(csv.reader(stream), [])]
    if extra := [name for name in header if name not in CSV_COLUMNS]:
        raise UserError(
            f"--resume: {path} has columns besides {', '.join(CSV_COLUMNS)} ({', '.join(extra)}), "
            "which the file written again would lose; remove them, or pass another --csv"
        )
    captioned, splits = [], {}
    for row in rows:
        if not row.image.strip():
            raise UserError(f"--resume: {row.where} names no image; fill it in or delete the row")
        image = os.path.join(folder, row.image)
        captioned.append((image, row.caption))
        splits[image] = row.split or ""
    return captioned, splits if "split" in header else None


def _csv_holds_names(paths: list[str], found: set[str], skipped: list[dict[str, str]]) -> list[str]:
    """``paths`` less those whose names are not UTF-8, which a CSV cannot hold: one named on the
    command line stops the command, one found in a folder or by a pattern is warned about and
    skipped (in ``skipped``)."""
    kept = []
    for path in paths:
        if is_utf8(path):
            kept.append(path)
            continue
        shown = shown_name(path)
        problem = f"{shown}: its name is not UTF-8, which the CSV cannot hold; rename it"
        if path not in found:
            raise UserError(f"{problem}, or caption it without --csv")
        skipped.append({"image": shown, "error": problem})
        print(f"warning: skipped {problem}", file=sys.stderr)
    return kept


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m captioner.caption",
        description="Caption images with a trained captioner checkpoint (beam search). Prints one "
        "'path<TAB>caption' line per image, or one JSON object with --json.",
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files, folders (every image in them, by extension; not recursive) or quoted "
        "glob patterns ('photos/*.jpg', 'data/**/*.png'); unreadable files found in a folder or "
        f"by a pattern are reported and skipped; any still format Pillow decodes ({ACCEPTED_FORMATS} "
        "and more), a multi-page or animated file by its first page or frame",
    )
    parser.add_argument(
        "--list",
        metavar="FILE",
        action="append",
        help="also the images a text file names, one path per line (relative to the current "
        "folder, as find prints them; - reads the standard input), after the IMAGE arguments: a "
        "list as long as a data set's, which a command line cannot hold; give it more than once "
        "for the lines of each file, in order",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        help="a best.pt / last.pt written by captioner.train; give it more than once to caption "
        "with the ensemble of the checkpoints (decoding settings of the first)",
    )
    parser.add_argument(
        "--beam-size",
        type=int,
        default=None,
        help="beam width (default: the checkpoint's decode.beam_size; 1 = greedy)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="most words per caption (default: the checkpoint's decode.max_length)",
    )
    parser.add_argument(
        "--n-best",
        type=int,
        default=1,
        help="print the K best captions per image, each with its log-probability (default: 1)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of lines"
    )
    parser.add_argument(
        "--csv",
        metavar="OUT.csv",
        help="also write 'image,caption' rows (the best caption; image paths relative to the "
        "CSV's folder) for review and for training with data.format=csv",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with the --csv file of a run that was stopped: its images are not captioned "
        "again, and the file ends with every image's row",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images decoded together (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    max_length = 1 if args.max_length is None else args.max_length  # checked again after loading
    if args.beam_size is not None:  # else the checkpoint's, checked once it is loaded
        check_decode_settings(args.beam_size, max_length, args.n_best)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.resume and not args.csv:
        raise UserError("--resume goes on with the file of --csv; pass the same --csv OUT.csv")
    if args.csv is not None:
        _check_csv_path(args.csv)
    if (args.list or []).count("-") > 1:
        raise UserError("--list - is given twice; the standard input can be read once")
    listed = [path for source in args.list or [] for path in read_list(source)]
    if not args.images and not listed:
        raise UserError("no images to caption; pass image files, folders or patterns, or --list")
    paths, found = expand_inputs([*args.images, *listed])
    skipped: list[dict[str, str]] = []
    before: list[tuple[str, str]] = []
    splits = None
    if args.csv:
        paths = _csv_holds_names(paths, found, skipped)
        real = [os.path.realpath(path) for path in paths]  # once: 30 us a path here
        target = Path(os.path.realpath(args.csv))  # a link: the file it names
        if str(target) in set(real):
            raise UserError(f"--csv {args.csv} is one of the images to caption; pass another path")
        files.hold(
            target.parent,
            lambda holder: UserError(
                f"--csv {args.csv} is being written by another caption command ({holder}); wait "
                "for it to end, or pass another --csv"
            ),
            name=f".{target.name}.lock",
        )
        if args.resume:
            before, splits = read_captioned(args.csv)
    if before:
        done = {os.path.realpath(image) for image, _ in before}
        paths = [path for path, key in zip(paths, real, strict=True) if key not in done]
        print(
            f"resuming: {len(before)} images are captioned in {args.csv}, {len(paths)} to go",
            file=sys.stderr,
        )
    _check_named_files_exist(paths, found)
    captioner = load_ensemble(args.checkpoint, args.device)
    bar = tqdm(total=len(paths), desc="captioning", unit="image", file=sys.stderr, disable=None)

    def skip(path: str, error: UserError) -> None:
        if path not in found:  # a file the user named: stop, as for a single image
            raise _NamedFileStop(str(error)) from None  # once the images before it are captioned
        message = " ".join(str(error).split())
        skipped.append({"image": path, "error": message})
        tqdm.write(f"warning: skipped {message}", file=sys.stderr)
        bar.update(1)

    results: list[tuple[str, CaptionResult]] = []

    def save() -> None:  # what is captioned so far, with what --resume found
        captioned = [*before, *((path, result.caption) for path, result in results)]
        write_csv(args.csv, captioned, splits)

    def print_json(stopped: str | None = None) -> None:  # the captions so far, on a stop too
        payload = {
            "checkpoint": args.checkpoint[0],
            "checkpoints": args.checkpoint,  # more than one: their ensemble captioned
            "beam_size": captioner.cfg.decode.beam_size
            if args.beam_size is None
            else args.beam_size,
            "results": [_result_json(path, result) for path, result in results],
            "skipped": skipped,
            **({"stopped": stopped} if stopped else {}),
        }
        print(json.dumps(payload, indent=2))

    def print_json_of_stop(stopped: str) -> None:  # the stop stays the stop, its reader gone too
        try:
            print_json(stopped)
        except BrokenPipeError:  # `... --json | jq` and Ctrl-C: jq has ended as well
            drop_unwritable_stdout(gone=True)

    saved = time.monotonic()
    try:
        for path, result in caption_files(
            captioner,
            paths,
            batch_size=args.batch_size,
            on_error=skip,
            beam_size=args.beam_size,
            max_length=args.max_length,
            n_best=args.n_best,
            **decode_arguments(args),
        ):
            results.append((path, result))
            if not args.json:
                for line in _lines(path, result, args.n_best):
                    tqdm.write(line, file=sys.stdout)
            bar.update(1)
            if args.csv and time.monotonic() - saved >= CSV_SAVE_EVERY_S:
                save()  # a kill loses at most this long's captions
                saved = time.monotonic()
        if args.csv and (results or before):
            save()  # here, so that a stop after the last image still writes the file
    except _NamedFileStop as error:
        if args.csv and results:
            save()  # keep what was captioned before it, as a stop by a signal does
        if args.json and results:  # the captions before it are not lost with the output
            print_json_of_stop(f"{error}; the images after it were not captioned")
        if not (args.csv and results):
            raise  # the file's own line: a _NamedFileStop is a UserError
        raise UserError(
            f"{error}; {args.csv} holds the captions of the {len(results)} images before it"
            f"{' and those of before' if before else ''}: mend the file or leave it out, and "
            "run the command with --resume to caption the rest"
        ) from None
    except (RunStopped, KeyboardInterrupt, BrokenPipeError) as stop:
        if isinstance(stop, BrokenPipeError):  # `... --csv OUT.csv | head`: the CSV is the job
            signal, code = READER_GONE, READER_GONE_STATUS
        elif isinstance(stop, KeyboardInterrupt):
            signal, code = "interrupted", 130
        else:
            signal, code = stop.signal_name, stop.exit_code
        if args.csv and results:
            save()  # first: the file is the job's record, the printed object a copy
        if args.json and results and not isinstance(stop, BrokenPipeError):
            print_json_of_stop(f"{signal or 'stopped'} after {len(results)} of {len(paths)} images")
        if not (args.csv and results):
            raise
        raise RunStopped(
            f"{signal or 'stopped'} after {len(results)} of {len(paths)} images; {args.csv} holds "
            f"their captions{' and those of before' if before else ''}: run the same command with "
            "--resume to caption the rest",
            exit_code=code,
        ) from None
    finally:
        bar.close()
    if not results and not before:
        raise UserError(
            f"none of the {len(paths)} image files could be read (see the warnings); "
            "pass readable images"
            if paths
            else "no image is left to caption (see the warnings); rename the images they name"
        )
    if args.csv:
        print(f"wrote {len(before) + len(results)} captions to {args.csv}", file=sys.stderr)
        if empty := sum(not result.caption.strip() for _, result in results):
            print(
                f"warning: {empty} of them are empty (the model ended them at once); write a "
                "caption in those rows or delete them before training on the file",
                file=sys.stderr,
            )
    if args.json:
        print_json()


def _check_named_files_exist(paths: Sequence[str], found: set[str]) -> None:
    """Stop before the model loads when a file named on the command line or in --list is missing
    (a --list of a data set's images need not caption thousands before the first line that names
    no file stops it); a file that exists but cannot be read still stops the command where it is
    met, after the images before it (a link that loops, a name too long, a folder it may not
    search: load_image says why). Folders' and patterns' files (`found`) exist: not checked."""
    named = [path for path in paths if path not in found]
    missing = [
        path for path in named if "\x00" not in path and _not_there(path)
    ]  # a NUL in a name is load_image's own line
    if len(missing) == 1:
        raise UserError(f"image file '{missing[0]}' not found; check the path")  # load_image's
    if missing:
        raise UserError(
            f"image file '{missing[0]}' not found, nor are {len(missing) - 1} more of the "
            f"{len(named)} files named; check the paths"
        )


def _not_there(path: str) -> bool:
    """Whether no file is at ``path`` (a broken link's target neither); not os.path.exists, which
    says False for every path it cannot look up."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _lines(path: str, result: CaptionResult, n_best: int) -> Iterable[str]:
    if n_best == 1:
        yield tab_separated(path, result.caption)
        return
    for text, logprob in result.beams:
        yield tab_separated(path, text, f"{logprob:.3f}")


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main, memory="lower --batch-size or --beam-size"))


if __name__ == "__main__":
    cli()
