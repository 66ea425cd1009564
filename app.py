"""Streamlit app: caption images, generate text and look inside this project's trained models.

    make app                                        # http://localhost:8501, bundled models/
    streamlit run app.py -- --models-dir runs/      # or CRNN_MODELS_DIR=runs/ streamlit run app.py

Five pages, picked in the sidebar (the shape of Streamlit's own demo apps: `main()` plus one
function per page); the sidebar also shows the chosen checkpoint's model card:

- Caption an image: upload an image or draw a fresh random scene from the built-in generator; the
  page shows the caption, the top beams with their log-probabilities and, for attention models,
  one attention heat map per word; "Ensemble with" adds checkpoints that caption with it as one
  model. A model trained on the synthetic scenes only says so next to the caption of an upload.
- Generate text: a character-level language model continues a prompt, streamed as it is sampled;
  every click draws a fresh seed and shows it ("Fixed seed" repeats a text).
- Training curves: loss, scores, learning rate, throughput of the runs (folders with a
  metrics.jsonl) under the models directory, against steps or wall time, redrawn while they train.
- Inside a character model: a text coloured by the model's surprise, by any hidden unit, units
  ranked by how well they track quotes or lines, and LSTM/GRU gate saturation.
- Lecture toys: train hihello, the ship sentence or a typed text in seconds and step through it.

This file holds UI only: models load through `captioner.inference.load_captioner`,
`captioner.ensemble.load_ensemble` and `char_lm.generate.load_char_lm` (once, in
`st.cache_resource`), captions come from
`caption_images`, text from `generate`, images from `load_image`, scenes from
`captioner.scenes.render_random_scene`, curves from `recurrent.plot`, states and gates from
`crnn_app.inside.trace`, toys from `crnn_app.toys`, cards from `crnn_app.cards`. Widget settings
survive page switches (`crnn_app.settings.keep`). A user mistake (bad image, bad prompt, broken
checkpoint) shows as one line on the page, never a traceback.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from captioner.data.images import load_image
from captioner.ensemble import load_ensemble
from captioner.inference import CaptionResult, caption_images, load_captioner
from captioner.scenes import caption_names_objects_correctly, render_random_scene
from char_lm.generate import generate, load_char_lm, trained_precision
from crnn_app.captioning import scene_size
from crnn_app.cards import (
    card_markdown,
    escape_markdown,
    inline_code,
    knows_only_scenes,
    readme_section,
)
from crnn_app.curves import MetricsTail, RunSummary, find_runs
from crnn_app.heatmap import attention_overlays, centre_square, fit_image, word_labels
from crnn_app.inside import (
    LN2,
    MAX_SURPRISE_BITS,
    TracedText,
    activation_html,
    bits,
    char_probabilities,
    gate_saturation,
    rank_units,
    saturation_chart,
    surprise_html,
    text_features,
    trace_text,
    unit_states,
)
from crnn_app.models_dir import (
    ENV_VAR,
    MAX_FILES,
    AppArgs,
    CheckpointEntry,
    Listing,
    check_models_dir,
    checkpoint_path,
    demo_models_command,
    describe_checkpoint,
    file_key,
    list_checkpoints,
    parse_app_args,
)
from crnn_app.settings import keep
from crnn_app.toys import (
    MAX_TOY_CHARS,
    MIN_TOY_CHARS,
    TOYS,
    bars_chart,
    cell_equations,
    char_labels,
    check_toy_text,
    greedy_check,
    loss_curve_spec,
    output_equation,
    strip_chart,
    toy_config,
    toy_window,
    trace_toy,
    train_toy,
)
from recurrent.errors import UserError, out_of_memory
from recurrent.plot import METRICS_FILE, X_AXES, curve_charts, metrics_frame, thin
from recurrent.training import pick_device

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]
DISPLAY_SIZE = 320  # pixels: the longer side of the image shown beside its caption
HEATMAP_SIZE = 128  # pixels: the longer side of each word's attention thumbnail
MAX_BEAM_SIZE = 10
MAX_PARTNERS = 4  # checkpoints an ensemble adds to the picked one (all held in memory at once)
MAX_SEED = 2**31  # seeds drawn for Generate are in [0, MAX_SEED)
MAX_PROMPT_CHARS = 5000  # the prompt is read one character at a time: 140k took 33 s
STREAM_REFRESH_S = 0.05  # how often the streamed text is redrawn while it grows
DEFAULT_PROMPT = "ROMEO:"
MAX_DEFAULT_RUNS = 4  # runs plotted when the curves page opens
CURVES_REFRESH_S = 5.0  # how often the curves page rereads metrics while following runs
CAPTIONING_SECTION = "Image captioning"  # the README section on training for photographs
# what to lower when memory runs out (the line says what ran out and how much it asked for)
APP_MEMORY = "lower the beam size, the ensemble or the text's length, or pick a smaller model"


# --------------------------------------------------------------------------------------------
# Cached loading: each checkpoint is read once per (path, mtime, size)


@st.cache_data(  # a miss reads and checks a whole file: about 0.4 s for 530 MB here
    show_spinner="Reading the checkpoints under the models directory (each file once)...",
    max_entries=1000,
)
def _describe(path: str, mtime_ns: int, size: int) -> tuple[str | None, str, dict]:
    """(task, summary, card), or (None, reason, {}) for a broken or foreign file (cached, so never
    reread)."""
    del mtime_ns, size  # cache keys only
    try:
        return describe_checkpoint(path)
    except UserError as err:
        return None, " ".join(str(err).split()), {}


def describe_cached(path: Path) -> tuple[str, str, dict]:
    task, text, card = _describe(str(path), *file_key(path))
    if task is None:
        raise UserError(text)
    return task, text, card


@st.cache_resource(show_spinner="Loading the captioner...", max_entries=4)
def _captioner(path: str, mtime_ns: int, size: int, device: str):
    del mtime_ns, size
    return load_captioner(path, device=device)


@st.cache_resource(show_spinner="Loading the ensemble...", max_entries=2)
def _ensemble(paths: tuple[str, ...], names: tuple[str, ...], keys: tuple, device: str):
    del keys  # each member's (mtime, size): a cache key only
    return load_ensemble(paths, device=device, names=names)


@st.cache_resource(show_spinner="Loading the language model...", max_entries=4)
def _char_lm(path: str, mtime_ns: int, size: int, device: str):
    del mtime_ns, size
    return load_char_lm(path, device=device)


def load_model(args: AppArgs, entry: CheckpointEntry, loader: Callable):
    """Load ``entry`` through the cache; only files inside the models directory are accepted."""
    path = checkpoint_path(args.models_dir, entry.name)
    device = pick_device(args.device)
    return loader(str(path), *file_key(path), str(device))


def load_ensemble_of(args: AppArgs, entries: list[CheckpointEntry]):
    """The captioners ``entries`` decoded as one ensemble, through the cache (`load_model`)."""
    paths = [checkpoint_path(args.models_dir, entry.name) for entry in entries]
    names = tuple(entry.name for entry in entries)
    keys = tuple(file_key(path) for path in paths)
    return _ensemble(tuple(map(str, paths)), names, keys, str(pick_device(args.device)))


# --------------------------------------------------------------------------------------------
# Shared widgets


def kept(key: str, default, bounds: tuple | None = None, **checks) -> str:
    """The widget key ``key``, its value kept across page switches (`crnn_app.settings.keep`)."""
    return keep(st.session_state, key, default, bounds=bounds, **checks)


def one_line(err: BaseException) -> str:
    """The error's message on one line, Markdown-inert (st.error and st.warning render Markdown,
    and a message quotes file names, prompts and values as they were written)."""
    return escape_markdown(" ".join(str(err).split()) or type(err).__name__)


def pick_checkpoint(entries: list[CheckpointEntry], label: str, key: str) -> CheckpointEntry:
    by_name = {entry.name: entry for entry in entries}
    names = list(by_name)
    name = st.sidebar.selectbox(
        label,
        names,
        key=kept(key, names[0], options=names),
        help="Checkpoints found under the models directory; its model card is below.",
    )
    st.sidebar.caption(card_markdown(by_name[name].card))
    return by_name[name]


def no_checkpoints(task: str, args: AppArgs) -> None:
    trainer = {"captioner": "python -m captioner.train", "char_lm": "python -m char_lm.train"}[task]
    st.info(
        f"No {task} checkpoint in the models directory '{escape_markdown(str(args.models_dir))}'. "
        f"Run {inline_code(demo_models_command(args.models_dir, DEFAULT_MODELS_DIR))} for the "
        f"bundled ones, train one with `{trainer}`, or point `--models-dir` / "
        f"`{ENV_VAR}` at a folder of checkpoints."
    )


def show_models_dir(args: AppArgs, listing: Listing) -> None:
    st.sidebar.caption(f"Models directory: {inline_code(str(args.models_dir))}")
    if listing.skipped or listing.truncated:
        with st.sidebar.expander(f"Skipped files ({len(listing.skipped)})"):
            for name, reason in listing.skipped:
                st.text(f"skipped: {name}: {reason}")
            if listing.truncated:
                st.text(
                    f"(of more than {MAX_FILES} checkpoint files, the {MAX_FILES} written last)"
                )


# --------------------------------------------------------------------------------------------
# Page: caption an image


def _use_upload() -> None:
    """The uploaded file, kept for the session like the settings: a page switch drops the
    uploader's own value (Streamlit forgets a widget that a run did not draw). Clearing the box
    forgets it."""
    st.session_state["image_source"] = "upload"
    st.session_state["kept_upload"] = st.session_state.get("upload")


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
    partners = pick_partners(entries, entry)
    if partners:
        captioner = load_ensemble_of(args, [entry, *partners])
    else:
        captioner = load_model(args, entry, _captioner)
    decode = captioner.cfg.decode
    beam_size = st.sidebar.slider(
        "Beam size",
        1,
        MAX_BEAM_SIZE,
        key=kept(
            "beam_size",
            min(MAX_BEAM_SIZE, max(1, decode.beam_size)),
            (1, MAX_BEAM_SIZE),
            follow=True,
        ),
        help="Captions kept at each step of beam search; 1 is greedy decoding.",
    )
    max_length = st.sidebar.slider(
        "Maximum length (words)",
        1,
        max(60, decode.max_length),
        key=kept("max_length", decode.max_length, (1, max(60, decode.max_length)), follow=True),
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
    if uploaded is None and source == "upload":
        uploaded = st.session_state.get("kept_upload")  # from before a page switch
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
        label = escape_markdown(uploaded.name)  # the image's caption renders Markdown
    else:
        st.info("Upload an image or draw a random scene to see its caption.")
        return

    [result] = caption_images(
        captioner, [image], beam_size=beam_size, max_length=max_length, n_best=beam_size, **options
    )
    scenes_only = scene is None and knows_only_scenes(entry.card)  # an upload, to a scenes model
    show_caption(image, label, result, references, scene, scenes_only)
    if partners:
        maps = (
            "; the heat maps are the first attending model's"
            if result.attention is not None
            else ""
        )
        st.caption(
            f"Captioned by an ensemble of {1 + len(partners)} checkpoints "
            f"({', '.join(escape_markdown(member.name) for member in [entry, *partners])}): each "
            "word is chosen from the "
            f"mean of their next-word probabilities{maps}."
        )


def pick_partners(entries: list[CheckpointEntry], entry: CheckpointEntry) -> list[CheckpointEntry]:
    """The checkpoints the sidebar's "Ensemble with" adds to ``entry`` (none when it is the only
    captioner); a choice that names ``entry`` itself (picked since) or a file gone is cleared."""
    others = [other for other in entries if other.name != entry.name]
    if not others:
        return []
    by_name = {other.name: other for other in others}
    chosen = st.sidebar.multiselect(
        "Ensemble with",
        list(by_name),
        key=kept(
            "ensemble_with",
            [],
            valid=lambda names: set(names) <= set(by_name) and len(names) <= MAX_PARTNERS,
        ),
        max_selections=MAX_PARTNERS,
        help="Caption with these checkpoints too, as one model: each next word comes from the "
        "mean of every model's probabilities (self-critical.pytorch's ensembles). They must share "
        "the vocabulary and the image size and normalisation; the decoding settings are the "
        f"first checkpoint's. At most {MAX_PARTNERS}: every model is held in the server's memory.",
    )
    return [by_name[name] for name in chosen]


def decoding_options(decode, beam_size: int, max_length: int) -> dict:
    """The sidebar's further decoding options (defaults: the checkpoint's decode settings)."""
    with st.sidebar.expander("More decoding options"):
        ngram = st.number_input(
            "Block repeated n-grams (0 = off)",
            0,
            6,
            key=kept("block_ngram_repeat", min(decode.block_ngram_repeat, 6), (0, 6), follow=True),
            help="No sequence of this many words appears twice in a caption.",
        )
        min_length = st.slider(
            "Minimum length (words)",
            0,
            max_length,
            key=kept(
                "min_length", min(decode.min_length, max_length), (0, max_length), follow=True
            ),
            help="The caption may not end before this many words.",
        )
        suppress_unk = st.checkbox(
            "Never emit <unk>", key=kept("suppress_unk", bool(decode.suppress_unk), follow=True)
        )
        divisors = [g for g in range(1, beam_size + 1) if beam_size % g == 0]
        groups = st.selectbox(
            "Diverse beam groups",
            divisors,
            key=kept(
                "diversity_groups",
                decode.diversity_groups if decode.diversity_groups in divisors else 1,
                options=divisors,
                follow=True,
            ),
            help="Diverse beam search: the beams split into groups that avoid each other's words.",
        )
        strength = st.slider(
            "Diversity strength",
            0.0,
            5.0,
            step=0.1,
            key=kept(
                "diversity_strength",
                float(min(decode.diversity_strength, 5.0)),
                (0.0, 5.0),
                follow=True,
            ),
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
    image,
    label: str,
    result: CaptionResult,
    references: list[str] | None,
    scene,
    scenes_only: bool = False,
) -> None:
    image_column, text_column = st.columns([2, 3])
    image_column.image(fit_image(image, DISPLAY_SIZE), caption=label)
    text_column.markdown("**Caption**")
    text_column.subheader(escape_markdown(result.caption) or "(empty caption)")
    if scenes_only:
        show_scenes_only_note(text_column)
    if scene is not None:
        if caption_names_objects_correctly(result.caption, scene):
            text_column.success("The caption names every object of the scene correctly.")
        else:
            text_column.warning("The caption does not name the scene's objects exactly.")
    text_column.markdown("**Top beams**")
    text_column.table(
        [
            {
                "caption": escape_markdown(text),  # the table renders Markdown
                "log-probability": round(logprob, 4),  # the table writes 4 decimals, as --json
                "ended": "yes" if ended else "no: cut at the length limit",
            }
            for (text, logprob), ended in zip(result.beams, result.finished, strict=True)
        ]
    )
    if scene is not None:
        with text_column.expander("Reference captions (ground truth)"):
            for reference in references or []:
                st.text(reference)
    if result.attention is not None and result.words:
        st.markdown(
            "**Where the model looks for each word** (soft attention over the image grid, on the "
            "centre square the model sees)"
        )
        overlays = attention_overlays(
            centre_square(image), result.attention, display_size=HEATMAP_SIZE
        )
        st.image(overlays, caption=word_labels(map(escape_markdown, result.words)))


SCENES_ONLY_NOTE = (
    "This model was trained on synthetic scenes only, so it describes coloured shapes only: a "
    "photograph gets a caption about shapes, not about what the photograph shows. To caption "
    "photographs, train a captioner on COCO or Flickr8k with a pretrained encoder (on a GPU), as "
    "the README's section **Image captioning** explains (below)."
)


def show_scenes_only_note(where) -> None:
    """Next to the caption of an upload: what a scenes-only model can describe, and what to do."""
    where.warning(SCENES_ONLY_NOTE)
    section = readme_section(REPO_ROOT / "README.md", CAPTIONING_SECTION)
    with where.expander(f'README.md, section "{CAPTIONING_SECTION}"'):
        st.markdown(section or f'See the section "{CAPTIONING_SECTION}" of README.md.')


# --------------------------------------------------------------------------------------------
# Page: generate text


def generate_page(args: AppArgs, listing: Listing) -> None:
    st.title("Generate text")
    entries = listing.for_task("char_lm")
    if not entries:
        no_checkpoints("char_lm", args)
        return
    entry = pick_checkpoint(entries, "Language model checkpoint", key="char_lm_checkpoint")
    model, vocab, config = load_model(args, entry, _char_lm)

    # an empty prompt starts from a newline; a vocabulary without one (hihello's) starts from
    # its first character, as the Inside page does (an empty prompt could not generate)
    default_prompt = (
        DEFAULT_PROMPT if set(DEFAULT_PROMPT) <= set(vocab) else "" if "\n" in vocab else vocab[0]
    )
    prompt = st.text_area(
        "Prompt",
        key=kept("prompt", default_prompt, valid=lambda text: bool(text) or "\n" in vocab),
        max_chars=MAX_PROMPT_CHARS,
        help="The text the model continues; use only characters of its training text.",
    )
    length = st.sidebar.slider("Length (characters)", 1, 2000, key=kept("length", 300, (1, 2000)))
    temperature = st.sidebar.slider(
        "Temperature",
        0.05,
        2.0,
        step=0.05,
        key=kept("temperature", 0.8, (0.05, 2.0)),
        help="Below 1: safer, more repetitive text; above 1: more surprising text.",
    )
    top_k = st.sidebar.number_input(
        "Top-k (0 = off)",
        0,
        len(vocab),
        key=kept("top_k", 0, (0, len(vocab))),
        help="Sample only among the k most likely characters.",
    )
    top_p = st.sidebar.slider(
        "Top-p (1 = off)",
        0.05,
        1.0,
        step=0.05,
        key=kept("top_p", 1.0, (0.05, 1.0)),
        help="Sample only among the most likely characters whose probabilities add up to p.",
    )
    fixed = st.sidebar.checkbox(
        "Fixed seed",
        key=kept("fixed_seed", False),
        help="Off: every Generate draws a fresh seed (shown under the text). On: the seed below "
        "is used every time, so the same settings give the same text.",
    )
    seed = st.sidebar.number_input(
        "Seed",
        0,
        MAX_SEED - 1,
        key=kept("seed", 0, (0, MAX_SEED - 1)),
        disabled=not fixed,
        help="The seed of the last text; tick Fixed seed to choose it.",
    )

    if st.button("Generate", key="generate", type="primary", on_click=_draw_seed):
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
            precision=trained_precision(model, config),
        )  # checks the prompt and settings now: a UserError shows before any text
        text = stream_text(prompt, characters)
        last = {"checkpoint": entry.name, "seed": int(seed), "fixed": fixed, "text": text}
        st.session_state["generated"] = last
        show_seed(last)
    elif "generated" in st.session_state:
        last = st.session_state["generated"]
        st.caption(f"Last generated text ({escape_markdown(last['checkpoint'])}):")
        show_text(st, last["text"])
        show_seed(last)


def _draw_seed() -> None:
    """Before the run a Generate click starts: a fresh seed unless the user fixed one."""
    if not st.session_state.get("fixed_seed"):
        st.session_state["seed"] = secrets.randbelow(MAX_SEED)


def show_seed(last: dict) -> None:
    if last["fixed"]:
        st.caption(f"Seed {last['seed']} (fixed): the same settings give this text again.")
    else:
        st.caption(
            f"Seed {last['seed']}, drawn for this click. To get this text again, tick "
            "**Fixed seed** in the sidebar (the seed stays) and press Generate."
        )


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
# Page: training curves


@st.cache_resource(show_spinner=False, max_entries=32)
def _metrics_tail(path: str, name: str) -> MetricsTail:
    """One reader per run file, shared by the sessions: it parses only what the run appends. It
    holds every row of its run (24 MB for 60,000 lines), so only the runs viewed last keep one;
    a run viewed again after that is parsed whole once more."""
    return MetricsTail(Path(path), name)


@st.cache_data(show_spinner=False, max_entries=200)
def _run_curves(
    path: str, mtime_ns: int, size: int, name: str, x_field: str
) -> tuple[RunSummary, pd.DataFrame]:
    """A run's summary and the rows of its curves against ``x_field``, thinned as the charts draw
    them (`recurrent.plot.thin`): recomputed only when the file changes (it grows while a run
    trains), and small to keep however long the run."""
    del mtime_ns, size
    summary, frame = _metrics_tail(path, name).read()
    return summary, thin(frame.dropna(subset=[x_field]), x_field)


X_AXIS_NAMES = {"step": "training steps", "time": "wall time"}


def curves_page(args: AppArgs, listing: Listing) -> None:
    del listing  # runs are folders with a metrics.jsonl, not checkpoints
    st.title("Training curves")
    runs, found = find_runs(args.models_dir)
    if not runs:
        st.info(
            f"No run with a {METRICS_FILE} under the models directory "
            f"'{escape_markdown(str(args.models_dir))}'. "
            "Training writes one into its run folder (`--out-dir`); serve your runs with "
            "`make app MODELS_DIR=runs`."
        )
        return
    chosen = st.multiselect(
        "Runs",
        runs,
        key=kept(
            "curve_runs", runs[:MAX_DEFAULT_RUNS], valid=lambda names: set(names) <= set(runs)
        ),
        help=f"Folders under the models directory that hold a {METRICS_FILE}; pick several to "
        "overlay them.",
    )
    if found > len(runs):
        st.caption(
            f"{len(runs)} of the {found} runs are offered: those whose metrics changed last. "
            "Serve a folder of fewer runs to see the others (`make app MODELS_DIR=...`)."
        )
    x_column, follow_column = st.columns([2, 1])
    x_axis = x_column.radio(
        "Plot against",
        list(X_AXIS_NAMES),
        format_func=X_AXIS_NAMES.get,
        horizontal=True,
        key=kept("curve_x", "step", options=list(X_AXIS_NAMES)),
    )
    follow = follow_column.toggle(
        "Follow runs in progress",
        key=kept("curve_follow", True),
        help=f"Redraw every {CURVES_REFRESH_S:g} s, so the curves of a run still training grow.",
    )
    if not chosen:
        st.info("Pick one or more runs to plot.")
        return
    st.fragment(run_every=CURVES_REFRESH_S if follow else None)(draw_curves)(
        args.models_dir, chosen, x_axis
    )


def draw_curves(models_dir: Path, names: list[str], x_axis: str) -> None:
    """The curves of the runs ``names``: one status line per run, then one chart per panel."""
    summaries, frames = {}, []
    x_field = X_AXES[x_axis][0]
    for name in names:
        path = models_dir / name / METRICS_FILE
        shown = escape_markdown(name)  # a folder's name, as written
        try:
            summaries[name], frame = _run_curves(str(path), *file_key(path), name, x_field)
        except FileNotFoundError:  # removed since the page listed it
            st.warning(f"{shown}: its {METRICS_FILE} is gone (the run was moved or removed)")
        except OSError as err:  # unreadable
            st.warning(f"{shown}: cannot read its {METRICS_FILE} ({err.strerror or one_line(err)})")
        except Exception as err:  # noqa: BLE001 - a fragment's error would show Streamlit's box
            st.warning(f"{shown} cannot be drawn ({type(err).__name__}: {one_line(err)}).")
        else:
            if not frame.empty:  # an empty one would make every column of the others `object`
                frames.append(frame)
    now = time.time()
    for name, summary in summaries.items():
        notes = "".join(f" ({note})" for note in summary.notes)
        st.caption(f"**{escape_markdown(name)}**: {summary.status(now)}{escape_markdown(notes)}")
    try:
        frame = pd.concat(frames, ignore_index=True) if frames else metrics_frame({})
        charts = curve_charts(frame, x_axis, titles=False, buckets=None)  # thinned per run
    except Exception as err:  # noqa: BLE001 - a fragment's error would show Streamlit's box
        st.warning(f"These runs cannot be drawn ({type(err).__name__}: {one_line(err)}).")
        return
    if not charts:
        st.info(
            "Nothing to plot yet against wall time: these metrics record no time; plot against "
            "training steps."
            if x_axis == "time"
            else "Nothing to plot yet: the runs have written no metrics lines."
        )
        return
    columns = st.columns(2)
    for index, (panel, chart) in enumerate(charts.items()):
        column = columns[index % 2]
        column.markdown(f"**{panel}**")
        column.altair_chart(chart, width="stretch")


# --------------------------------------------------------------------------------------------
# Page: inside a character model

EXAMPLE_PASSAGE = """ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,
Who is already sick and pale with grief,
That thou her maid art far more fair than she.

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?
Deny thy father and refuse thy name;
Or, if thou wilt not, be but sworn my love,
And I'll no longer be a Capulet.
"""
MAX_INSIDE_CHARS = 1500  # the text is traced step by step in Python: keep it quick
SAMPLE_SEED = 0


@st.cache_resource(show_spinner="Tracing the text through the model...", max_entries=2)
def _traced(path: str, mtime_ns: int, size: int, device: str, text: str) -> TracedText:
    model, vocab, _ = _char_lm(path, mtime_ns, size, device)
    return trace_text(model, vocab, text)


@st.cache_data(show_spinner=False, max_entries=8)
def _model_sample(path: str, mtime_ns: int, size: int, device: str) -> str:
    """A text the model can read whatever its vocabulary: 400 characters of its own (seed 0),
    from a newline, or from its first character where it has no newline (as hihello's)."""
    model, vocab, _ = _char_lm(path, mtime_ns, size, device)
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    start = "" if "\n" in vocab else vocab[0]
    sampled = generate(model, vocab, start, 400 - len(start), temperature=0.8, generator=generator)
    return start + "".join(sampled)


def inside_page(args: AppArgs, listing: Listing) -> None:
    st.title("Inside a character model")
    entries = listing.for_task("char_lm")
    if not entries:
        no_checkpoints("char_lm", args)
        return
    entry = pick_checkpoint(entries, "Language model checkpoint", key="char_lm_checkpoint")
    path = checkpoint_path(args.models_dir, entry.name)
    device = str(pick_device(args.device))
    model, vocab, _config = load_model(args, entry, _char_lm)
    fits = set(EXAMPLE_PASSAGE) <= set(vocab)
    default = EXAMPLE_PASSAGE if fits else _model_sample(str(path), *file_key(path), device)
    text = st.text_area(
        "Text to look inside (type or paste; at most "
        f"{MAX_INSIDE_CHARS:,} characters of the model's vocabulary)",
        key=kept(f"inside_text:{entry.name}", default),
        height=160,
        max_chars=MAX_INSIDE_CHARS,
    )
    if not fits and text == default:
        st.caption(
            "The example passage uses characters this model never saw: here is a sample of its own."
        )
    if not text:
        st.info("Type or paste a text to see what the model makes of it.")
        return
    traced = _traced(str(path), *file_key(path), device, text)  # a UserError names odd characters
    probabilities, candidates = char_probabilities(traced, vocab)
    known = [p for p in probabilities if p is not None]
    if known:
        mean_bits = sum(bits(p) for p in known) / len(known)
        st.caption(
            f"{len(text):,} character{'s' * (len(text) != 1)}, {mean_bits:.2f} bits per "
            "character on average "
            f"({mean_bits * LN2:.3f} nats): lower is less surprised."
        )
    surprise_tab, units_tab, gates_tab = st.tabs(["Surprise", "Hidden units", "Gate saturation"])
    with surprise_tab:
        show_surprise(text, probabilities, candidates)
    with units_tab:
        show_units(traced, model)
    with gates_tab:
        show_gates(traced)


def show_surprise(text: str, probabilities: list, candidates: list) -> None:
    st.markdown(
        "Each character on the colour of its surprise, -log₂ p: white when the model was sure of "
        f"it, red at {MAX_SURPRISE_BITS:g} bits or more. Hover a character for its probability "
        "and the five characters the model expected after it."
    )
    st.html(surprise_html(text, probabilities, candidates))
    position = (
        st.slider(
            "Character to look at", 1, len(text), key=kept("inside_position", 1, (1, len(text)))
        )
        if len(text) > 1
        else 1  # a slider from 1 to 1 is refused by Streamlit
    )
    char, probability = text[position - 1], probabilities[position - 1]
    shown = (
        "the first character (no context)"
        if probability is None
        else (f"p = {probability:.3f}, {bits(probability):.2f} bits")
    )
    st.markdown(
        f"Character {position}: {inline_code(repr(char))}, {shown}. The five most likely after it:"
    )
    st.table(
        [
            {"next character": escape_markdown(repr(c)), "probability": round(p, 4)}
            for c, p in candidates[position - 1]
        ]
    )


def _show_unit(layer: int, state: str, unit: int) -> None:
    st.session_state["inside_layer"] = layer + 1
    st.session_state["inside_state"] = state
    st.session_state["inside_unit"] = unit


def show_units(traced: TracedText, model) -> None:
    core = model.core
    states = ["h", "c"] if core.cell == "lstm" else ["h"]
    left, middle, right = st.columns(3)
    layer = left.number_input(
        "Layer", 1, core.num_layers, key=kept("inside_layer", core.num_layers, (1, core.num_layers))
    )
    state = middle.radio(
        "State",
        states,
        format_func=STATE_NAMES.get,
        horizontal=True,
        key=kept("inside_state", "h", options=states),
    )
    unit = right.number_input(
        "Unit", 0, core.hidden_size - 1, key=kept("inside_unit", 0, (0, core.hidden_size - 1))
    )
    values = unit_states(traced)[(layer - 1, state)][:, unit]
    scale = 1.0 if state == "h" else max(1e-6, float(abs(values).max()))
    st.markdown(
        f"Each character on the colour of unit {unit}'s {STATE_NAMES[state]} (layer {layer}) "
        "after reading it: blue negative, white 0, red positive"
        + ("." if state == "h" else f" (scaled by its largest magnitude here, {scale:.2f}).")
    )
    st.html(activation_html(traced.text, values.tolist(), scale))

    st.markdown(
        "**Find interesting units**: the units whose activation follows a feature of the text "
        "most closely (Pearson correlation over this text), as in Karpathy, Johnson and Fei-Fei "
        "(2015), *Visualizing and Understanding Recurrent Networks*."
    )
    varying = [name for name, values in text_features(traced.text).items() if values.std() > 0]
    feature = st.selectbox(
        "Feature",
        FEATURES,
        key=kept("inside_feature", (varying or FEATURES)[0], options=FEATURES),
    )
    ranked = rank_units(traced, feature)
    if not ranked:
        st.info(f"'{feature}' does not vary over this text: {FEATURE_HINTS[feature]}")
        return
    st.table(
        [
            {
                "layer": score.layer + 1,
                "state": score.state,
                "unit": score.unit,
                "correlation": round(score.correlation, 4),  # the table writes 4 decimals
            }
            for score in ranked
        ]
    )
    best = ranked[0]
    st.button(
        f"Colour the text by the best one (layer {best.layer + 1}, {best.state}, unit {best.unit})",
        key="inside_show_best",
        on_click=_show_unit,
        args=(best.layer, best.state, best.unit),
    )


def show_gates(traced: TracedText) -> None:
    table = gate_saturation(traced.trace, traced.rows())
    if not table:
        st.info("An Elman RNN has no gates: its state is tanh(W_ih x + W_hh h + b).")
        return
    st.markdown(
        "For every unit of every gate, the fraction of this text's characters at which the gate "
        "was left-saturated (below 0.1, closed) and right-saturated (above 0.9, open): units near "
        "the axes switch sharply, units at the origin stay in between (Karpathy et al. 2015, "
        "figure 3). A longer text gives steadier fractions."
    )
    st.altair_chart(saturation_chart(table), width="content")


STATE_NAMES = {"h": "hidden state h", "c": "cell state c"}
FEATURES = list(text_features(""))
FEATURE_HINTS = {
    "inside quotes": 'add text in double quotes ("...") if the model knows the character.',
    "start of a line": "the text needs line breaks.",
    "position in line": "the text needs at least three characters.",
}


# --------------------------------------------------------------------------------------------
# Page: the lecture toys, step by step

TOY_CELLS = ["rnn", "lstm", "gru"]
LOSS_REDRAWS = 40  # times the live loss curve is redrawn while a toy trains


def toys_page(args: AppArgs, listing: Listing) -> None:
    del args, listing  # the toys train here, from configs/char_lm/
    st.title("The lecture toys, step by step")
    st.markdown(
        "Train a tiny character model in seconds, then step through its text: the one-hot "
        "input, the hidden state, the logits and the softmax, and the cell's equations with "
        "the numbers of that step."
    )
    toy = st.radio(
        "Toy", list(TOYS), horizontal=True, key=kept("toy", "hihello", options=list(TOYS))
    )
    config_file, text = TOYS[toy]
    if text is None:
        text = st.text_input(
            f"Text to learn ({MIN_TOY_CHARS} to {MAX_TOY_CHARS} characters)",
            key=kept("toy_text", "hello world, hello recurrent networks."),
            max_chars=MAX_TOY_CHARS,
        )
    base = toy_config(config_file)
    cell_column, steps_column = st.columns(2)
    cell = cell_column.radio(
        "Cell",
        TOY_CELLS,
        format_func=str.upper,
        horizontal=True,
        key=kept("toy_cell", base.model.cell, options=TOY_CELLS),
    )
    steps = steps_column.slider(
        "Training steps",
        10,
        2000,
        step=10,
        key=kept(f"toy_steps:{toy}", base.train.max_steps, (10, 2000)),
        help=f"{config_file}: {base.model.num_layers} layer(s) of {base.model.hidden_size} units, "
        f"one-hot input, windows of {toy_window(base, len(text))} characters, "
        f"lr {base.train.lr:g}.",
    )
    settings = {"toy": toy, "text": text, "cell": cell, "steps": steps}
    if st.button("Train", key="toy_train", type="primary"):
        cfg = toy_config(config_file, cell, steps)
        run = train_live(cfg, check_toy_text(text))
        st.session_state["toy_run"] = {"settings": settings, "run": run, "trace": trace_toy(run)}
    trained = st.session_state.get("toy_run")
    if trained is None:
        st.info("Press **Train** (a few seconds on a CPU).")
        return
    if trained["settings"] != settings:
        old = trained["settings"]
        st.caption(
            f"Showing the model trained on {old['toy']} with a {old['cell'].upper()} for "
            f"{old['steps']} steps; press Train for the settings above."
        )
    show_toy(trained["run"], trained["trace"])


def train_live(cfg, text: str):
    """`train_toy` with a progress bar and the loss curve redrawn as it falls."""
    total = cfg.train.max_steps
    progress = st.progress(0.0, text="training...")
    curve = st.empty()
    losses: list[float] = []
    every = max(1, total // LOSS_REDRAWS)

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        if step % every == 0 or step == total:
            progress.progress(step / total, text=f"step {step}/{total}: loss {loss:.3f}")
            curve.vega_lite_chart(None, loss_curve_spec(losses), width="stretch")

    run = train_toy(cfg, text, on_step)
    progress.empty()
    curve.empty()
    return run


def show_toy(run, toy_trace) -> None:
    losses = run.losses
    st.vega_lite_chart(None, loss_curve_spec(losses), width="stretch")
    st.caption(
        f"{run.config.model.cell.upper()}, {len(losses)} steps: loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f} nats/char."
    )
    prompt, continued = greedy_check(run)
    verdict = "reproduces the text" if continued == run.text else "does not reproduce the text yet"
    st.markdown(
        f"Greedy from {inline_code(repr(prompt))}: {inline_code(repr(continued))}: **{verdict}**."
    )

    steps = toy_trace.ids.numel()
    step = st.slider(
        "Time step t",
        1,
        steps,
        key=kept("toy_step", 1, (1, steps)),
        help="Step t reads character t of the text and predicts character t + 1.",
    )
    t = step - 1
    vocab = run.vocab
    labels = char_labels(vocab)
    reads, target = run.text[t], run.text[t + 1]
    target_id = vocab.index(target)
    probabilities = torch.softmax(toy_trace.logits[t].float(), dim=-1)
    chosen_id = int(probabilities.argmax())
    chosen = vocab[chosen_id]
    st.markdown(
        f"Step {step} reads {inline_code(repr(reads))} and should predict "
        f"{inline_code(repr(target))}; the model's most likely next character is "
        f"{inline_code(repr(chosen))} (p = {float(probabilities[chosen_id]):.3f})"
        + (": **right**." if chosen == target else ": **wrong**.")
    )
    one_hot = [1.0 if char == reads else 0.0 for char in vocab]
    st.altair_chart(
        strip_chart(one_hot, labels, "input x_t (one-hot)", (0.0, 1.0), "greys"), width="stretch"
    )
    for index, layer in enumerate(toy_trace.layers):
        hidden = layer.h[t].tolist()
        st.altair_chart(
            strip_chart(
                hidden, [str(i) for i in range(len(hidden))], f"hidden state h_t, layer {index + 1}"
            ),
            width="stretch",
        )
    logits_column, softmax_column = st.columns(2)
    logits_column.altair_chart(
        bars_chart(toy_trace.logits[t].tolist(), labels, "output logits y_t", target_id),
        width="stretch",
    )
    softmax_column.altair_chart(
        bars_chart(probabilities.tolist(), labels, "softmax: p(next character)", target_id),
        width="stretch",
    )

    st.markdown(
        f"**The {run.config.model.cell.upper()} cell's equations at step {step}** (one unit j)"
    )
    layer_column, unit_column = st.columns(2)
    layers = len(toy_trace.layers)
    hidden_size = run.config.model.hidden_size
    layer = layer_column.number_input("Layer", 1, layers, key=kept("toy_layer", 1, (1, layers)))
    unit = unit_column.number_input(
        "Unit j", 0, hidden_size - 1, key=kept("toy_unit", 0, (0, hidden_size - 1))
    )
    for equation in cell_equations(toy_trace, layer - 1, t, unit):
        st.latex(equation.latex)
    st.latex(output_equation(toy_trace, t, vocab, target_id).latex)


# --------------------------------------------------------------------------------------------

PAGES = {
    "Caption an image": caption_page,
    "Generate text": generate_page,
    "Training curves": curves_page,
    "Inside a character model": inside_page,
    "Lecture toys": toys_page,
}


def main() -> None:
    st.set_page_config(
        page_title="crnn: captions and text", page_icon=":speech_balloon:", layout="wide"
    )
    args = parse_app_args(sys.argv[1:], os.environ, DEFAULT_MODELS_DIR)
    page = st.sidebar.radio("Page", list(PAGES), key="page")
    try:
        check_models_dir(args.models_dir, DEFAULT_MODELS_DIR)
        listing = list_checkpoints(args.models_dir, describe=describe_cached)
        show_models_dir(args, listing)
        PAGES[page](args, listing)
    except UserError as err:
        st.error(one_line(err))
    except Exception as err:  # an internal failure: still one line, never a traceback
        if (said := out_of_memory(err)) is not None:  # a wide beam, a long text, a big model
            st.error(f"{said[0].upper()}{said[1:]}: {APP_MEMORY}.")
        else:
            st.error(f"Something went wrong ({type(err).__name__}: {one_line(err)}).")


if __name__ == "__main__":
    main()
