"""Score a trained captioner on a split: corpus BLEU-1..4, plus CIDEr-D / METEOR / ROUGE-L when the
optional ``pycocoevalcap`` is installed.

    python -m captioner.evaluate --checkpoint runs/captioner/scenes_demo/best.pt --split test
    python -m captioner.evaluate --checkpoint runs/hard/best.pt --checkpoint runs/hard_top_down/best.pt

With more than one --checkpoint the captions come from their ensemble (`captioner.ensemble`: the
mean of the models' next-word probabilities), decoded with the first checkpoint's settings and
scored on its data.

Captions are decoded for real (beam search, no teacher forcing). BLEU is corpus BLEU (nltk
``corpus_bleu``, all reference captions of an image) on a 0-100 scale, over the tokens of
`captioner.data.tokenize` (`captioner.scoring.TOKENIZATION`); the references and the generated
captions are tokenised alike.

``--predictions OUT.json`` writes the captions in the COCO results format,
``[{"image_id": ..., "caption": ...}, ...]``. The image_id is, per split: the number at the end of
the file names when every name ends in one and they are all different (COCO's
``COCO_val2014_000000391895.jpg`` -> 391895, as the official COCO evaluation expects); else the
file stem when the stems are all different (Flickr's ``1000268201_693b08cb0e``, the scenes'
``000042``); else the image's position in the split (0, 1, ...).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence

from captioner.data import select_split, tokenize
from captioner.ensemble import ensemble_from_payloads
from captioner.inference import add_decode_arguments, decode_arguments, decode_settings
from captioner.metrics import repeat_share
from captioner.scoring import (
    TOKENIZATION,
    TOKENIZER,
    add_data_arguments,
    check_predictions_path,
    data_from_arguments,
    describe_scores,
    evaluate_split,
    image_ids,
    load_data_records,
    older_split,
    seen_note,
    what_was_scored,
    write_predictions,
)
from recurrent.checkpoint import load_checkpoint
from recurrent.errors import ArgumentParser, UserError, run_cli


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m captioner.evaluate",
        description="Decode a split with a trained captioner and report corpus BLEU-1..4 and "
        f"CIDEr-D (0-100; tokens: {TOKENIZATION}), and METEOR and ROUGE-L when pycocoevalcap is "
        "installed. Compare two prediction files with python -m captioner.compare.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        help="a best.pt / last.pt of captioner.train; give it more than once to decode with the "
        "ensemble of the checkpoints (same vocabulary and image size; settings and data of the "
        "first)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="which split to score (default: test)",
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
        "--max-images",
        type=int,
        default=0,
        help="score only the first N images of the split (0: all)",
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images decoded at once (default: 32)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--no-meteor",
        action="store_true",
        help="skip METEOR (its Java start-up takes seconds); CIDEr-D and ROUGE-L are still computed",
    )
    add_decode_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--predictions",
        default=None,
        metavar="OUT.json",
        help="write the captions in the COCO results format [{image_id, caption}, ...]",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_images < 0:
        raise UserError(f"--max-images must be 0 (all) or more, got {args.max_images}")
    if args.predictions is not None:
        check_predictions_path(args.predictions)
    payloads = [load_checkpoint(path, task="captioner") for path in args.checkpoint]
    captioner = ensemble_from_payloads(payloads, args.checkpoint, args.device)
    data = data_from_arguments(captioner.cfg.data, args)
    every_split = records = load_data_records(data)
    records = select_split(records, args.split, source=data.annotations, fractions_fixed=True)
    ids = image_ids(records)  # the whole split's, which compare reads
    if args.max_images:
        records, ids = records[: args.max_images], ids[: args.max_images]
    if args.split != "train":  # scores that may count images a model trained on say so
        for path, payload in zip(args.checkpoint, payloads, strict=True):
            # on its own data, a rule that drew other splits; on any, the images it trained on
            older = older_split(payload, every_split) if args.annotations is None else None
            if why := older or seen_note(payload, records):
                print(
                    f"note: {path}: {why}; these scores may count images it trained on, "
                    "so score it on images it never saw",
                    file=sys.stderr,
                )
    if not any(tokenize(caption) for record in records for caption in record.captions):
        raise UserError(
            f"no reference caption of the {args.split} split has a word (every one is empty "
            "after tokenization), so every score would be 0; check the annotations"
        )
    settings = decode_settings(
        captioner, beam_size=args.beam_size, max_length=args.max_length, **decode_arguments(args)
    )
    scores, predictions = evaluate_split(
        captioner,
        records,
        decode=settings,
        batch_size=args.batch_size,
        num_workers=data.num_workers,
        meteor=not args.no_meteor,
        progress=not args.json,
        ids=ids,
    )
    if args.predictions:
        write_predictions(predictions, args.predictions)
    repeats = repeat_share([prediction["caption"] for prediction in predictions])
    # captions the length limit ended before their <end>: scored cut short
    cut = sum(not prediction["finished"] for prediction in predictions) / len(predictions)
    report = {
        "checkpoint": args.checkpoint[0],
        "checkpoints": args.checkpoint,  # more than one: their ensemble decoded
        "annotations": data.annotations,
        "split": args.split,
        "images": len(records),
        "tokenizer": TOKENIZER,
        "tokenization": TOKENIZATION,
        "beam_size": settings.beam_size,
        "max_length": settings.max_length,
        "decode": dataclasses.asdict(settings),
        "precision": captioner.precision().name,  # as the first checkpoint was trained
        "scores": {key: round(float(value), 4) for key, value in scores.items()},
        "repeated_word_share": round(repeats, 4),
        "cut_at_max_length_share": round(cut, 4),
        "predictions": args.predictions,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(what_was_scored(args.split, len(records), data.annotations))
    if len(args.checkpoint) > 1:
        print(
            f"ensemble of {len(args.checkpoint)} checkpoints (mean of their word probabilities): "
            + ", ".join(args.checkpoint)
        )
    print(f"decoding: {describe_decoding(settings)}, in {report['precision']}")
    print(f"scores (0-100): {describe_scores(scores)}")
    if not {"METEOR", "ROUGE-L"} & set(scores):
        print("  (install pycocoevalcap for METEOR and ROUGE-L)")
    print(f"captions with a word twice in a row: {repeats:.1%}")
    print(
        f"captions cut at {settings.max_length} words before their end: {cut:.1%}"
        + (" (raise --max-length to let them end)" if cut else "")
    )
    for prediction in predictions[:3]:
        print(f"  e.g. {prediction['image_id']}: {prediction['caption']}")
    if args.predictions:
        print(f"predictions: {args.predictions} (COCO results format)")


def describe_decoding(settings) -> str:
    """ "beam 3, at most 24 words, ...": the decoding settings, the options only when on."""
    parts = [f"beam {settings.beam_size}", f"at most {settings.max_length} words"]
    if settings.length_penalty:
        parts.append(f"length penalty {settings.length_penalty:g}")
    if settings.block_ngram_repeat:
        parts.append(f"no repeated {settings.block_ngram_repeat}-gram")
    if settings.min_length:
        parts.append(f"at least {settings.min_length} words")
    if settings.suppress_unk:
        parts.append("no <unk>")
    if settings.diversity_groups > 1:
        parts.append(
            f"{settings.diversity_groups} diverse groups (strength {settings.diversity_strength:g})"
        )
    return ", ".join(parts)


def cli() -> None:
    """Console-script entry point: a user mistake becomes one line on stderr, exit status 2."""
    raise SystemExit(run_cli(main, memory="lower --batch-size or --beam-size"))


if __name__ == "__main__":
    cli()
