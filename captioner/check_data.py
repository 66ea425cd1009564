"""Scan a captioning data set before a long run: every annotation, every image decoded.

    python -m captioner.check_data --config configs/captioner/coco.yaml [--set data.bad_images=skip]
    python -m captioner.check_data --checkpoint runs/captioner/coco/best.pt  # the data it trained on

Loads the annotations of the config's ``data`` section (as `captioner.train` does), opens and
decodes every image on a bounded pool of threads, and prints a summary, then the paths of missing
and undecodable images, images listed twice, files with identical bytes, and captions that are
empty after tokenization. The exit status says whether training would run: 0 if it would, 1 if it
would stop (a missing image, no train or val split, a val image that does not decode, or a train
image that does not decode under ``data.bad_images=error``), 2 for a bad config or annotations
file (one line on stderr). The library side is `captioner.data.check`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

from captioner.config import BOUNDS, CaptionerConfig, check_config
from captioner.data import SPLITS, resolve_weights
from captioner.data.check import BAD, MISSING, DataReport, default_workers, scan_images
from captioner.data.formats import tab_separated
from captioner.data.vocab import RUN_ON_LETTERS, SPECIALS
from captioner.encoder import build_backbone
from captioner.inference import saved_config
from captioner.scoring import add_data_arguments, data_from_arguments, load_data_records
from recurrent.checkpoint import load_checkpoint
from recurrent.config import Interval, add_config_arguments, check_bounds, load_config
from recurrent.errors import ArgumentParser, run_cli

EXIT_WOULD_STOP = 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m captioner.check_data",
        description="Check a captioning data set before training: load every annotation, decode "
        "every image (in parallel), report missing and undecodable images, duplicates, "
        "captions empty after tokenization and captions longer than training or decoding takes. "
        "Exit status: 0 if training would run, 1 if it would stop, 2 for a bad config or "
        "annotations file.",
    )
    either = parser.add_mutually_exclusive_group(required=True)
    add_config_arguments(parser, "configs/captioner/coco.yaml", either=either)
    either.add_argument(
        "--checkpoint",
        help="in place of --config: the config a best.pt / last.pt of captioner.train was "
        "trained with, whose data evaluate reads (with evaluate's --annotations, --image-root "
        "and --format for other data)",
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="threads decoding images (default: the CPUs available, %(default)s here)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = _config(args)
    if args.checkpoint is None:  # a training config: what train would refuse, refused here
        check_config(cfg)
        if isinstance(resolve_weights(cfg.model.weights, cfg.model.encoder), str):
            build_backbone(cfg.model.encoder, cfg.model.weights)  # a local weights file: read it
    cfg = dataclasses.replace(cfg, data=data_from_arguments(cfg.data, args))  # evaluate's flags
    data = cfg.data
    # Every record, whatever its images: the check reports missing ones instead of stopping.
    records = load_data_records(data, check_images=False, report=True)
    paths = list(dict.fromkeys(record.image_path for record in records))
    started = time.perf_counter()
    bar = tqdm(total=len(paths), desc="decoding", unit="image", disable=args.quiet or None)
    checks = {c.path: c for c in scan_images(paths, args.workers, on_done=lambda _: bar.update())}
    bar.close()
    seconds = time.perf_counter() - started
    report = DataReport.build(records, checks, data.min_word_count)
    reasons = report.stops_training(data.bad_images)
    lengths = report.caption_lengths(data.max_caption_length, cfg.decode.max_length)
    if args.json:
        print(json.dumps(report.to_json(data.bad_images, lengths), indent=1))
    else:
        _print_report(report, cfg, len(report.vocab), seconds, args.workers, reasons, lengths)
    if reasons:
        raise SystemExit(EXIT_WOULD_STOP)


def _config(args: argparse.Namespace) -> CaptionerConfig:
    """The config of --config, or of --checkpoint (checked as evaluate checks it: a training
    setting checked more strictly since the run does not concern its data; the weights come from
    the checkpoint), with the --set overrides."""
    if args.checkpoint is None:
        return load_config(CaptionerConfig, args.config, args.overrides, bounds=BOUNDS)
    saved = saved_config(load_checkpoint(args.checkpoint, task="captioner"), args.checkpoint)
    cfg = load_config(CaptionerConfig, None, args.overrides, saved=saved)
    check_bounds(cfg, BOUNDS)  # the --set values'
    return cfg


def _print_report(
    report: DataReport,
    cfg: CaptionerConfig,
    vocab_size: int,
    seconds: float,
    workers: int,
    reasons: list[str],
    lengths: dict[str, int],
) -> None:
    data, out = cfg.data, sys.stdout
    missing, bad = report.paths(MISSING), report.paths(BAD)
    splits = ", ".join(f"{split} {report.splits.get(split, 0)}" for split in SPLITS)
    annotations = (
        data.annotations if isinstance(data.annotations, str) else ", ".join(data.annotations)
    )
    print(f"annotations: {data.format} {annotations}", file=out)
    print(
        f"  {len(report.records)} records ({splits}) of {len(report.checks)} image files, "
        f"{report.captions} captions",
        file=out,
    )
    if report.drawn:
        print(
            f"  splits of {report.drawn} image(s) drawn by a hash of their paths "
            f"(data.split_seed={data.split_seed}, val_fraction={data.val_fraction}, "
            f"test_fraction={data.test_fraction}): adding images moves none of them",
            file=out,
        )
    print(
        f"images: {len(report.checks)} read and decoded in {seconds:.1f} s on {workers} "
        f"thread(s): {len(report.checks) - len(missing) - len(bad)} fine, {len(missing)} missing, "
        f"{len(bad)} do not decode",
        file=out,
    )
    print(
        f"duplicates: {len(report.listed_twice)} image(s) listed more than once, "
        f"{len(report.same_bytes)} group(s) of files with identical bytes",
        file=out,
    )
    print(f"captions empty after tokenization: {len(report.empty_captions)}", file=out)
    if report.run_on:
        path, text = report.run_on[0]
        print(
            f"captions of words not split by spaces: {len(report.run_on)} (Thai, Lao, Burmese, "
            f"Khmer or Tibetan letters run on for more than {RUN_ON_LETTERS}: each run is one "
            "word to the tokenizer, so most become <unk>; split their words by spaces first, "
            f"with a word segmenter for the language), e.g. {path!r}: {text[:40]!r}",
            file=out,
        )
    print(_lengths_line(lengths, cfg), file=out)
    words = vocab_size - len(SPECIALS)  # <pad>, <start>, <end>, <unk> are no words
    print(
        f"vocabulary: {words} words and {len(SPECIALS)} special tokens "
        f"(data.min_word_count={data.min_word_count})",
        file=out,
    )
    # one line each, tab-separated (a name holding a tab or a line break quoted as csv does)
    for path in missing:
        print(tab_separated("missing", path), file=out)
    for path in bad:
        splits_of = ",".join(report.split_of(path))
        print(tab_separated("bad", path, splits_of, report.checks[path].reason), file=out)
    for path, splits_of in report.listed_twice.items():
        print(tab_separated(f"listed {len(splits_of)} times", path, ",".join(splits_of)), file=out)
    for group in report.same_bytes:
        splits_of = sorted({split for path in group for split in report.split_of(path)})
        print(tab_separated("same bytes", *group, ",".join(splits_of)), file=out)
    for path, caption in report.empty_captions:
        print(tab_separated("empty caption", path, repr(caption)), file=out)
    bad_train, bad_test = report.paths(BAD, ("train",)), report.paths(BAD, ("test",))
    if reasons:
        print(f"training would stop: {'; '.join(reasons)}", file=out)
        return
    notes = []
    if bad_train:
        notes.append(f"skipping {len(bad_train)} train image(s) (data.bad_images=skip)")
    if bad_test:
        notes.append(f"{len(bad_test)} test image(s) do not decode: evaluating test would stop")
    print("training would run" + "".join(f"; {note}" for note in notes), file=out)


def _lengths_line(lengths: dict[str, int], cfg: CaptionerConfig) -> str:
    """The captions' lengths, and what training and decoding would cut (see
    `DataReport.caption_lengths`)."""
    line = (
        f"caption lengths: median {lengths['median']} tokens, 95% at most {lengths['p95']}, "
        f"longest {lengths['longest']}"
    )
    if lengths["train_cut"]:
        line += (
            f"; {lengths['train_cut']} training caption(s) are longer than "
            f"data.max_caption_length={cfg.data.max_caption_length} and are cut to it"
        )
    if lengths["references_too_long"]:
        longest = min(
            lengths["longest_reference"], int(Interval.parse(BOUNDS["decode.max_length"]).high)
        )
        line += (
            f"; {lengths['references_too_long']} val/test reference(s) are longer than "
            f"decode.max_length={cfg.decode.max_length}, which no decoded caption can be (e.g. "
            f"--set decode.max_length={longest})"
        )
    return line


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
