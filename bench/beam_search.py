"""Batched beam search against one image at a time, the way the popular tutorials decode.

    python bench/beam_search.py                      # the bundled demo captioner, beam 5, 256 scenes
    python bench/beam_search.py --checkpoint runs/captioner/scenes_hard/best.pt --preset hard

Draws fresh scenes (never training images), then times, in interleaved rounds on the same
machine in one run:

- search only: `beam_search` over the encoded images, all in one batch against one image per call;
- end to end: `caption_images` (PIL image -> preprocessing -> CNN -> beam search) with every
  image in one batch against one image per call.

It checks that both ways give identical captions (every one of the ``--n-best``, tokens and
finished flags) and prints the medians over the rounds in ms per image and their ratios.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    captioner = load_captioner(args.checkpoint)
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
    search_batched(), caption_alone()  # warm-up (allocator, oneDNN kernels)
    times: dict[str, list[float]] = {name: [] for name in cases}
    outputs = {}
    for _ in range(args.rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append((time.perf_counter() - start) / args.images)

    def keys(results):
        return [[(c.tokens, c.finished) for c in captions] for captions in results]

    same_search = keys(outputs["search batched"]) == keys(outputs["search alone"])

    def rounded(results):
        return [[(text, round(logprob, 4)) for text, logprob in r.beams] for r in results]

    same_caption = rounded(outputs["caption batched"]) == rounded(outputs["caption alone"])
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
        f"median of {args.rounds} interleaved rounds"
    )
    for name in cases:
        print(f"  {name:16s} {median[name] * 1e3:8.2f} ms per image")
    print(
        f"search only: batched is {median['search alone'] / median['search batched']:.2f}x "
        f"faster than one image at a time; identical captions: {same_search}"
    )
    print(
        f"end to end (caption_images): batched is "
        f"{median['caption alone'] / median['caption batched']:.2f}x faster; identical captions: "
        f"{text_same} (log-probabilities equal to 4 decimals: {same_caption})"
    )
    if not (same_search and text_same):
        raise SystemExit("batched and one-at-a-time captions differ")


if __name__ == "__main__":
    main()
