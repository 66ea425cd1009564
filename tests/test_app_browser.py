"""The app in a real browser: `streamlit run app.py` on a free port, driven by Debian's chromium.

Playwright's Python package drives /usr/bin/chromium (never `playwright install`, which downloads
a browser; `make test` installs chromium with apt when it is missing). The test opens every page:
it uploads an image file and waits for the caption the library gives for it, generates text and
checks it against the seed the page shows, plots the training curves, colours a passage by the
model's surprise (checked against the library) and trains the hihello toy. It uses the bundled
demo models when models/ has them, else two tiny models it trains itself.

Screenshots of every page go to a temporary folder, so a test run leaves the tree unchanged;
`make screenshots` sets $CRNN_SCREENSHOTS_DIR to docs/screenshots/ to refresh the README's.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pytest
import torch
from tiny_models import train_tiny_captioner, train_tiny_char_lm

from bench.app_load import streamlit_server
from captioner.data.images import load_image
from captioner.inference import caption_images, load_captioner
from captioner.scenes import MIN_SIZE, generate_dataset, render_random_scene
from char_lm.generate import generate, load_char_lm, trained_precision
from crnn_app.inside import char_probabilities, trace_text

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS_ENV = "CRNN_SCREENSHOTS_DIR"  # `make screenshots`: docs/screenshots/
BUNDLED = {"captioner": "scenes_captioner.pt", "char_lm": "shakespeare_char.pt"}
VIEWPORT = {"width": 1280, "height": 1000}
CAPTION_WAIT_MS = 90_000
# The app's text page defaults (app.py): the library is asked for the same text.
DEFAULT_LENGTH, DEFAULT_TEMPERATURE = 300, 0.8


def _tiny_models(root: Path) -> Path:
    """Train a tiny captioner and char LM (seconds) into root/models; return that folder."""
    models_dir = root / "models"
    annotations = generate_dataset(root / "scenes", 24, seed=0, size=MIN_SIZE)
    train_tiny_captioner(models_dir / "captioner", annotations)
    train_tiny_char_lm(models_dir / "char_lm", root / "text.txt")
    return models_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Path]:
    bundled = REPO / "models"
    if all((bundled / name).is_file() for name in BUNDLED.values()):
        return {
            "dir": bundled,
            "captioner": bundled / BUNDLED["captioner"],
            "char_lm": bundled / BUNDLED["char_lm"],
        }
    models_dir = _tiny_models(tmp_path_factory.mktemp("browser"))
    return {
        "dir": models_dir,
        "captioner": models_dir / "captioner" / "best.pt",
        "char_lm": models_dir / "char_lm" / "best.pt",
    }


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """`make app`'s command on a free port (bench/app_load.py's), its log in a temporary folder."""
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    with streamlit_server(models["dir"], log_path) as (url, _pid):
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing; run `make test`, which installs Debian's chromium "
            "(scripts/ensure_chromium.sh) before the tests"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing; run `make test` (it installs '.[dev]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _expected_text(path: Path, prompt: str, seed: int) -> str:
    model, vocab, config = load_char_lm(path)
    generator = torch.Generator().manual_seed(seed)
    characters = generate(
        model,
        vocab,
        prompt,
        DEFAULT_LENGTH,
        temperature=DEFAULT_TEMPERATURE,
        generator=generator,
        precision=trained_precision(model, config),  # as the app runs it
    )
    return prompt + "".join(characters)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the screenshots go: $CRNN_SCREENSHOTS_DIR (`make screenshots`), else a temporary
    folder, so that `make test` never rewrites the tracked pictures."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open_page(page, name: str, heading: str) -> None:
    from playwright.sync_api import expect

    page.set_viewport_size(VIEWPORT)
    page.get_by_text(name, exact=True).first.click()
    expect(page.get_by_role("heading", name=heading)).to_be_visible(timeout=CAPTION_WAIT_MS)


def _settle(page) -> None:
    """Wait for images and charts to finish drawing, then make the window as tall as the page:
    Streamlit scrolls its main section, not the document, so a full-page screenshot would
    otherwise stop at the window's height."""
    page.wait_for_function(
        "() => Array.from(document.images).every(image => image.complete && image.naturalWidth)"
    )
    page.wait_for_timeout(800)  # let the last paint finish
    height = page.evaluate(
        "() => Math.max(...['stMain', 'stSidebarContent', 'stSidebarUserContent'].map("
        "id => (document.querySelector(`[data-testid=${id}]`) || {scrollHeight: 0}).scrollHeight))"
    )
    if height > VIEWPORT["height"]:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height + 40})
        page.wait_for_timeout(800)  # charts redraw at the new size


def _no_exception(page) -> None:
    assert page.locator("[data-testid=stException]").count() == 0
    assert page.locator("[data-testid=stAlertContentError]").count() == 0


def test_every_page_in_a_browser(
    server: str, browser, models: dict[str, Path], tmp_path: Path, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    image_path = tmp_path / "fresh_scene.png"
    render_random_scene(20240601, 96)[0].save(image_path)
    captioner = load_captioner(str(models["captioner"]))
    beam_size = captioner.cfg.decode.beam_size  # the app's default
    [expected] = caption_images(
        captioner, [load_image(image_path)], beam_size=beam_size, n_best=beam_size
    )
    model, vocab, _ = load_char_lm(models["char_lm"])
    prompt = "ROMEO:" if set("ROMEO:") <= set(vocab) else "the cat"

    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(CAPTION_WAIT_MS)
    page.goto(server)
    expect(page.get_by_role("heading", name="Caption an image")).to_be_visible(
        timeout=CAPTION_WAIT_MS
    )

    # Caption an image: an upload, its caption and beams, the model card in the sidebar
    page.locator("input[type=file]").set_input_files(str(image_path))
    caption = page.locator("h3", has_text=expected.caption)
    expect(caption.first).to_be_visible(timeout=CAPTION_WAIT_MS)
    assert caption.first.inner_text().strip() == expected.caption
    table = page.locator("[data-testid=stTable]")
    for text, _ in expected.beams:  # every beam, with its log-probability
        expect(table).to_contain_text(text, timeout=CAPTION_WAIT_MS)
    sidebar = page.locator("[data-testid=stSidebar]")
    expect(sidebar).to_contain_text("architecture")
    _settle(page)
    page.screenshot(path=str(screenshots / "caption.png"), full_page=True)
    _no_exception(page)

    # Generate text: a fresh seed, shown, gives the library's text for that seed
    _open_page(page, "Generate text", "Generate text")
    prompt_box = page.get_by_role("textbox", name="Prompt")
    prompt_box.fill(prompt)
    prompt_box.press("Control+Enter")  # commit the text area before pressing the button
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Generate").click()
    seed_line = page.get_by_text(re.compile(r"^Seed \d+, drawn for this click"))
    expect(seed_line).to_be_visible(timeout=CAPTION_WAIT_MS)
    seed = int(re.match(r"Seed (\d+)", seed_line.inner_text()).group(1))
    expected_text = _expected_text(models["char_lm"], prompt, seed)
    code = page.locator("[data-testid=stCode] code").first
    expect(code).to_contain_text(expected_text[-20:].strip(), timeout=CAPTION_WAIT_MS)
    shown = code.inner_text()
    assert shown.startswith(prompt)
    assert " ".join(shown.split()) == " ".join(expected_text.split())
    _settle(page)
    page.screenshot(path=str(screenshots / "generate.png"), full_page=True)
    _no_exception(page)

    # Training curves: the bundled runs' metrics (or none, with a message, for tiny models)
    _open_page(page, "Training curves", "Training curves")
    if (models["dir"] / "shakespeare_char" / "metrics.jsonl").is_file():
        expect(page.locator(".vega-embed").first).to_be_visible(timeout=CAPTION_WAIT_MS)
        expect(page.get_by_text("shakespeare_char", exact=False).first).to_be_visible()
    else:
        expect(page.get_by_text("No run with a metrics.jsonl")).to_be_visible()
    _settle(page)
    page.screenshot(path=str(screenshots / "curves.png"), full_page=True)
    _no_exception(page)

    # Inside a character model: every character of the passage coloured, with the library's
    # probability in its hover title
    _open_page(page, "Inside a character model", "Inside a character model")
    text_box = page.get_by_role("textbox", name=re.compile("Text to look inside"))
    # the box can show before the app fills in its passage: read it once it has one (an empty
    # read made this test fail once in a clean-clone CI run)
    expect(text_box).not_to_have_value("", timeout=CAPTION_WAIT_MS)
    passage = text_box.input_value()
    spans = page.locator("[data-testid=stHtml]").first.locator("span[title]")
    expect(spans).to_have_count(len(passage), timeout=CAPTION_WAIT_MS)
    probabilities, _ = char_probabilities(trace_text(model, vocab, passage), vocab)
    for index in (1, len(passage) // 2, len(passage) - 1):
        title = html.unescape(spans.nth(index).get_attribute("title"))
        assert f"p = {probabilities[index]:.3f}" in title, (index, title)
    spans.nth(8).hover()  # the tooltip shows in the screenshot
    _settle(page)
    page.screenshot(path=str(screenshots / "inside.png"), full_page=True)
    _no_exception(page)

    # Lecture toys: hihello trains in seconds and is reproduced; the equations are typeset
    _open_page(page, "Lecture toys", "The lecture toys, step by step")
    page.get_by_role("button", name="Train", exact=True).click()
    expect(page.get_by_text("reproduces the text")).to_be_visible(timeout=CAPTION_WAIT_MS)
    expect(page.locator(".katex").first).to_be_visible(timeout=CAPTION_WAIT_MS)
    assert page.locator(".katex-display").count() >= 7  # i, f, g, o, c, h and p(next)
    assert page.locator(".katex-error").count() == 0  # KaTeX parsed every line
    _settle(page)
    page.screenshot(path=str(screenshots / "toys.png"), full_page=True)
    _no_exception(page)
    page.close()
