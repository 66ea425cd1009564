"""Streamlit app: caption images and generate text with this project's trained models.

    make app                                        # http://localhost:8501, bundled models/
    streamlit run app.py -- --models-dir runs/      # or CRNN_MODELS_DIR=runs/ streamlit run app.py

Two pages, picked in the sidebar (the shape of Streamlit's own demo apps: `main()` plus one
function per page):

- Caption an image: upload an image or draw a fresh random scene from the built-in generator; the
  page shows the caption, the top beams with their log-probabilities and, for attention models,
  one attention heat map per word.
- Generate text: a character-level language model continues a prompt, streamed as it is sampled.

This file holds UI only: models load through `captioner.inference.load_captioner` and
`char_lm.generate.load_char_lm` (once, in `st.cache_resource`), captions come from
`caption_images`, text from `generate`, images from `load_image`, scenes from
`captioner.scenes.render_random_scene`. A user mistake (bad image, bad prompt, broken checkpoint)
shows as one line on the page, never a traceback.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st
import torch

from captioner.data.images import load_image
from captioner.inference import CaptionResult, caption_images, load_captioner
from captioner.scenes import caption_names_objects_correctly, render_random_scene
from char_lm.generate import generate, load_char_lm
from crnn_app.captioning import scene_size
from crnn_app.heatmap import attention_overlays, fit_image, word_labels
from crnn_app.models_dir import (
    ENV_VAR,
    AppArgs,
    CheckpointEntry,
    Listing,
    check_models_dir,
    checkpoint_path,
    describe_checkpoint,
    file_key,
    list_checkpoints,
    parse_app_args,
)
from recurrent.errors import UserError
from recurrent.training import pick_device

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]
DISPLAY_SIZE = 320  # pixels: the longer side of the image shown beside its caption
HEATMAP_SIZE = 128  # pixels: the longer side of each word's attention thumbnail
MAX_BEAM_SIZE = 10
STREAM_REFRESH_S = 0.05  # how often the streamed text is redrawn while it grows
DEFAULT_PROMPT = "ROMEO:"


# --------------------------------------------------------------------------------------------
# Cached loading: each checkpoint is read once per (path, mtime, size)


@st.cache_data(show_spinner=False, max_entries=1000)
def _describe(path: str, mtime_ns: int, size: int) -> tuple[str | None, str]:
    """(task, summary), or (None, reason) for a broken or foreign file (cached, so never reread)."""
    del mtime_ns, size  # cache keys only
    try:
        return describe_checkpoint(path)
    except UserError as err:
        return None, " ".join(str(err).split())


def describe_cached(path: Path) -> tuple[str, str]:
    task, text = _describe(str(path), *file_key(path))
    if task is None:
        raise UserError(text)
    return task, text


@st.cache_resource(show_spinner="Loading the captioner...", max_entries=4)
def _captioner(path: str, mtime_ns: int, size: int, device: str):
    del mtime_ns, size
    return load_captioner(path, device=device)


@st.cache_resource(show_spinner="Loading the language model...", max_entries=4)
def _char_lm(path: str, mtime_ns: int, size: int, device: str):
    del mtime_ns, size
    return load_char_lm(path, device=device)


def load_model(args: AppArgs, entry: CheckpointEntry, loader: Callable):
    """Load ``entry`` through the cache; only files inside the models directory are accepted."""
    path = checkpoint_path(args.models_dir, entry.name)
    device = pick_device(args.device)
    return loader(str(path), *file_key(path), str(device))


# --------------------------------------------------------------------------------------------
# Shared widgets


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def pick_checkpoint(entries: list[CheckpointEntry], label: str, key: str) -> CheckpointEntry:
    by_name = {entry.name: entry for entry in entries}
    name = st.sidebar.selectbox(
        label,
        list(by_name),
        key=key,
        help="Checkpoints found under the models directory; the line below describes the chosen one.",
    )
    st.sidebar.caption(by_name[name].summary)
    return by_name[name]


def no_checkpoints(task: str, args: AppArgs) -> None:
    trainer = {"captioner": "python -m captioner.train", "char_lm": "python -m char_lm.train"}[task]
    st.info(
        f"No {task} checkpoint in the models directory '{args.models_dir}'. Run `make demo-models` "
        f"for the bundled ones, train one with `{trainer}`, or point `--models-dir` / "
        f"`{ENV_VAR}` at a folder of checkpoints."
    )


def show_models_dir(args: AppArgs, listing: Listing) -> None:
    st.sidebar.caption(f"Models directory: `{args.models_dir}`")
    if listing.skipped or listing.truncated:
        with st.sidebar.expander(f"Skipped files ({len(listing.skipped)})"):
            for name, reason in listing.skipped:
                st.text(f"skipped: {name}: {reason}")
            if listing.truncated:
                st.text("(only the first files found are listed)")


# --------------------------------------------------------------------------------------------
# Page: caption an image


def _use_upload() -> None:
    st.session_state["image_source"] = "upload"


def _new_scene() -> None:
    st.session_state["image_source"] = "scene"
    st.session_state["scene_seed"] = secrets.randbelow(2**31)


def caption_page(args: AppArgs, listing: Listing) -> None:
    st.title("Caption an image")
    entries = listing.for_task("captioner")
    if not entries:
        no_checkpoints("captioner", args)
        return
    entry = pick_checkpoint(entries, "Captioner checkpoint", key="captioner_checkpoint")
    captioner = load_model(args, entry, _captioner)
    decode = captioner.cfg.decode
    beam_size = st.sidebar.slider(
        "Beam size",
        1,
        MAX_BEAM_SIZE,
        min(MAX_BEAM_SIZE, max(1, decode.beam_size)),
        key="beam_size",
        help="Captions kept at each step of beam search; 1 is greedy decoding.",
    )
    max_length = st.sidebar.slider(
        "Maximum length (words)",
        1,
        max(60, decode.max_length),
        decode.max_length,
        key="max_length",
        help="Decoding stops after this many words even without an end token.",
    )
    options = decoding_options(decode, beam_size, max_length)

    upload_column, scene_column = st.columns([3, 2])
    uploaded = upload_column.file_uploader(
        "Upload an image (PNG, JPEG, WebP, BMP or GIF; an animated GIF is captioned by its first "
        "frame)",
        type=UPLOAD_TYPES,
        key="upload",
        on_change=_use_upload,
    )
    scene_column.write("Or let the model caption a picture it has never seen:")
    scene_column.button("Draw a random scene", key="random_scene", on_click=_new_scene)

    source = st.session_state.get("image_source")
    references: list[str] | None = None
    scene = None
    if source == "scene" and "scene_seed" in st.session_state:
        seed = st.session_state["scene_seed"]
        image, scene, references = render_random_scene(
            seed, scene_size(captioner.cfg.data.image_size)
        )
        label = f"Random scene (seed {seed})"
    elif uploaded is not None:
        try:
            image = load_image(uploaded)
        except UserError as err:
            st.error(one_line(err))
            return
        label = uploaded.name
    else:
        st.info("Upload an image or draw a random scene to see its caption.")
        return

    [result] = caption_images(
        captioner, [image], beam_size=beam_size, max_length=max_length, n_best=beam_size, **options
    )
    show_caption(image, label, result, references, scene)


def decoding_options(decode, beam_size: int, max_length: int) -> dict:
    """The sidebar's further decoding options (defaults: the checkpoint's decode settings)."""
    with st.sidebar.expander("More decoding options"):
        ngram = st.number_input(
            "Block repeated n-grams (0 = off)",
            0,
            6,
            min(decode.block_ngram_repeat, 6),
            key="block_ngram_repeat",
            help="No sequence of this many words appears twice in a caption.",
        )
        min_length = st.slider(
            "Minimum length (words)",
            0,
            max_length,
            min(decode.min_length, max_length),
            key="min_length",
            help="The caption may not end before this many words.",
        )
        suppress_unk = st.checkbox("Never emit <unk>", decode.suppress_unk, key="suppress_unk")
        divisors = [g for g in range(1, beam_size + 1) if beam_size % g == 0]
        groups = st.selectbox(
            "Diverse beam groups",
            divisors,
            divisors.index(decode.diversity_groups) if decode.diversity_groups in divisors else 0,
            key="diversity_groups",
            help="Diverse beam search: the beams split into groups that avoid each other's words.",
        )
        strength = st.slider(
            "Diversity strength",
            0.0,
            5.0,
            float(min(decode.diversity_strength, 5.0)),
            step=0.1,
            key="diversity_strength",
            help="Penalty per word an earlier group chose at the same step (with 2+ groups).",
        )
    return {
        "block_ngram_repeat": int(ngram),
        "min_length": int(min_length),
        "suppress_unk": bool(suppress_unk),
        "diversity_groups": int(groups),
        "diversity_strength": float(strength),
    }


def show_caption(
    image, label: str, result: CaptionResult, references: list[str] | None, scene
) -> None:
    image_column, text_column = st.columns([2, 3])
    image_column.image(fit_image(image, DISPLAY_SIZE), caption=label)
    text_column.markdown("**Caption**")
    text_column.subheader(result.caption or "(empty caption)")
    if scene is not None:
        if caption_names_objects_correctly(result.caption, scene):
            text_column.success("The caption names every object of the scene correctly.")
        else:
            text_column.warning("The caption does not name the scene's objects exactly.")
    text_column.markdown("**Top beams**")
    text_column.table(
        [{"caption": text, "log-probability": round(logprob, 3)} for text, logprob in result.beams]
    )
    if scene is not None:
        with text_column.expander("Reference captions (ground truth)"):
            for reference in references or []:
                st.text(reference)
    if result.attention is not None and result.words:
        st.markdown("**Where the model looks for each word** (soft attention over the image grid)")
        overlays = attention_overlays(image, result.attention, display_size=HEATMAP_SIZE)
        st.image(overlays, caption=word_labels(result.words))


# --------------------------------------------------------------------------------------------
# Page: generate text


def generate_page(args: AppArgs, listing: Listing) -> None:
    st.title("Generate text")
    entries = listing.for_task("char_lm")
    if not entries:
        no_checkpoints("char_lm", args)
        return
    entry = pick_checkpoint(entries, "Language model checkpoint", key="char_lm_checkpoint")
    model, vocab, _config = load_model(args, entry, _char_lm)

    default_prompt = DEFAULT_PROMPT if set(DEFAULT_PROMPT) <= set(vocab) else ""
    prompt = st.text_area(
        "Prompt",
        value=default_prompt,
        key="prompt",
        help="The text the model continues; use only characters of its training text.",
    )
    length = st.sidebar.slider("Length (characters)", 1, 2000, 300, key="length")
    temperature = st.sidebar.slider(
        "Temperature",
        0.05,
        2.0,
        0.8,
        step=0.05,
        key="temperature",
        help="Below 1: safer, more repetitive text; above 1: more surprising text.",
    )
    top_k = st.sidebar.number_input(
        "Top-k (0 = off)",
        0,
        len(vocab),
        0,
        key="top_k",
        help="Sample only among the k most likely characters.",
    )
    top_p = st.sidebar.slider(
        "Top-p (1 = off)",
        0.05,
        1.0,
        1.0,
        step=0.05,
        key="top_p",
        help="Sample only among the most likely characters whose probabilities add up to p.",
    )
    seed = st.sidebar.number_input(
        "Seed", 0, 2**31 - 1, 0, key="seed", help="The same seed and settings give the same text."
    )

    if st.button("Generate", key="generate", type="primary"):
        if not prompt:
            st.info("The prompt is empty: the text starts from the beginning of a new line.")
        generator = torch.Generator().manual_seed(int(seed))
        characters = generate(
            model,
            vocab,
            prompt,
            int(length),
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
            greedy=False,
            generator=generator,
        )  # checks the prompt and settings now: a UserError shows before any text
        text = stream_text(prompt, characters)
        st.session_state["generated"] = {"checkpoint": entry.name, "seed": int(seed), "text": text}
    elif "generated" in st.session_state:
        last = st.session_state["generated"]
        st.caption(f"Last generated text ({last['checkpoint']}, seed {last['seed']}):")
        show_text(st, last["text"])


def show_text(where, text: str) -> None:
    """``text`` verbatim in a code block (st.code drops one leading and one trailing newline)."""
    where.code(f"\n{text}\n", language=None, wrap_lines=True)


def stream_text(prompt: str, characters) -> str:
    """Show the prompt, then the characters as they come; return the whole text."""
    placeholder = st.empty()
    text = prompt
    show_text(placeholder, text)
    shown_at = time.monotonic()
    for character in characters:
        text += character
        if time.monotonic() - shown_at >= STREAM_REFRESH_S:
            show_text(placeholder, text)
            shown_at = time.monotonic()
    show_text(placeholder, text)
    return text


# --------------------------------------------------------------------------------------------

PAGES = {"Caption an image": caption_page, "Generate text": generate_page}


def main() -> None:
    st.set_page_config(
        page_title="crnn: captions and text", page_icon=":speech_balloon:", layout="wide"
    )
    args = parse_app_args(sys.argv[1:], os.environ, DEFAULT_MODELS_DIR)
    page = st.sidebar.radio("Page", list(PAGES), key="page")
    try:
        check_models_dir(args.models_dir)
        listing = list_checkpoints(args.models_dir, describe=describe_cached)
    except UserError as err:
        st.error(one_line(err))
        return
    show_models_dir(args, listing)
    try:
        PAGES[page](args, listing)
    except UserError as err:
        st.error(one_line(err))
    except Exception as err:  # an internal failure: still one line, never a traceback
        st.error(f"Something went wrong ({type(err).__name__}: {one_line(err)}).")


if __name__ == "__main__":
    main()
