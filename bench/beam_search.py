"""Batched beam search against one image at a time, the way the popular tutorials decode.

    python bench/beam_search.py                      # the bundled demo captioner, beam 5, 256 scenes
    python bench/beam_search.py --checkpoint runs/captioner/scenes_hard/best.pt --preset hard

Draws fresh scenes (never training images), then times, in interleaved rounds on the same
machine in one run:

- search only: `beam_search` over the encoded images, all in one batch against one image per call;
- end to end: `caption_images` (PIL image -> preprocessing -> CNN -> beam search) with every
  image in one batch against one image per call.

Both run in the precision the captioner serves in (`Captioner.autocast`: the checkpoint's
``train.precision`` on this machine, bf16 for ``auto`` on a CPU with native bf16), or in
``--precision``. It compares the captions of both ways (every one of the ``--n-best``, tokens and
finished flags; any difference is an error, reported with the number of images that differ) and
prints the medians over the rounds in ms per image and their ratios. In bf16 both ways compute
every row to the same bits (the log-probabilities agree exactly); in fp32 to rounding order.

``--baseline FILE`` also times, in the same rounds, the ``beam_search`` of another version of
`captioner/decode.py` (say the one before a change: ``git show REV:captioner/decode.py >
old_decode.py``) and checks that it finds the same captions.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.recurrent_core import machine  # noqa: E402
from captioner.decode import beam_search  # noqa: E402
from captioner.inference import caption_images, encode_images, load_captioner  # noqa: E402
from captioner.scenes import render_random_scene  # noqa: E402
from recurrent.errors import run_cli  # noqa: E402

FRESH_SEED = 500_000  # render_random_scene(int) never draws a training image (those use "seed:i")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="models/scenes_captioner.pt")
    parser.add_argument("--preset", default="demo", choices=("demo", "hard"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--n-best", type=int, default=1, help="captions kept per image")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--baseline", help="another decode.py whose beam_search to time too")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="decode in this precision (default: the checkpoint's train.precision)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    captioner = load_captioner(args.checkpoint)
    if args.precision:
        captioner.cfg.train.precision = args.precision
    precision = captioner.precision()
    size = captioner.cfg.data.image_size
    images = [
        render_random_scene(FRESH_SEED + index, size, args.preset)[0]
        for index in range(args.images)
    ]
    vocab, decoder = captioner.vocab, captioner.model.decoder
    settings = dict(
        beam_size=args.beam_size,
        max_length=captioner.cfg.decode.max_length,
        start_id=vocab.start_id,
        end_id=vocab.end_id,
        n_best=args.n_best,
    )
    features = encode_images(captioner, images)
    rows = [features.index_select(torch.tensor([index])) for index in range(args.images)]

    def search_batched():
        return beam_search(decoder, features, **settings)

    def search_alone():
        return [beam_search(decoder, row, **settings)[0] for row in rows]

    def caption_batched():
        return caption_images(captioner, images, beam_size=args.beam_size, batch_size=args.images)

    def caption_alone():
        return [
            caption_images(captioner, [image], beam_size=args.beam_size, n_best=args.n_best)[0]
            for image in images
        ]

    cases = {
        "search batched": search_batched,
        "search alone": search_alone,
        "caption batched": caption_batched,
        "caption alone": caption_alone,
    }
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_decode", args.baseline)
        baseline = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = baseline  # its dataclasses look their module up
        spec.loader.exec_module(baseline)
        cases["baseline batched"] = lambda: baseline.beam_search(decoder, features, **settings)
        cases["baseline alone"] = lambda: [
            baseline.beam_search(decoder, row, **settings)[0] for row in rows
        ]
    times: dict[str, list[float]] = {name: [] for name in cases}
    outputs = {}
    with captioner.autocast():  # every case decodes as caption_images does (it enters it too)
        search_batched(), caption_alone()  # warm-up (allocator, oneDNN kernels)
        for _ in range(args.rounds):
            for name, run in cases.items():
                start = time.perf_counter()
                outputs[name] = run()
                times[name].append((time.perf_counter() - start) / args.images)

    def keys(results):
        return [[(c.tokens, c.finished) for c in captions] for captions in results]

    differing = sum(
        a != b
        for a, b in zip(keys(outputs["search batched"]), keys(outputs["search alone"]), strict=True)
    )
    same_search = differing == 0

    logprob_gap = max(
        abs(x[1] - y[1])
        for a, b in zip(outputs["caption batched"], outputs["caption alone"], strict=True)
        for x, y in zip(a.beams, b.beams, strict=True)
    )
    text_same = [r.caption for r in outputs["caption batched"]] == [
        r.caption for r in outputs["caption alone"]
    ]
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load is not None:
        print(f"load average (1, 5, 15 min): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    print(
        f"checkpoint: {args.checkpoint}; {args.images} fresh {args.preset} scenes of {size} px; "
        f"beam {args.beam_size}, n_best {args.n_best}, at most {settings['max_length']} words; "
        f"{precision.name}; median of {args.rounds} interleaved rounds"
    )
    for name in cases:
        print(f"  {name:16s} {median[name] * 1e3:8.2f} ms per image")
    print(
        f"search only: batched is {median['search alone'] / median['search batched']:.2f}x "
        f"faster than one image at a time; identical captions: {same_search}"
        + ("" if same_search else f" ({differing} of {args.images} images differ)")
    )
    print(
        f"end to end (caption_images): batched is "
        f"{median['caption alone'] / median['caption batched']:.2f}x faster; identical captions: "
        f"{text_same} (log-probabilities within {logprob_gap:.1e})"
    )
    if args.baseline:
        same_baseline = keys(outputs["baseline batched"]) == keys(outputs["search batched"])
        same_baseline &= keys(outputs["baseline alone"]) == keys(outputs["search batched"])
        print(
            f"baseline {args.baseline}: batched {median['baseline batched'] * 1e3:.2f}, alone "
            f"{median['baseline alone'] * 1e3:.2f} ms per image "
            f"({median['baseline alone'] / median['baseline batched']:.2f}x); this version's "
            f"batched search is {median['baseline batched'] / median['search batched']:.2f}x "
            f"faster than the baseline's; same captions: {same_baseline}"
        )
    if not (same_search and text_same):
        raise SystemExit("batched and one-at-a-time captions differ")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))  # a mistake (a file, a flag): one line, exit status 2
