"""Ensemble decoding (captioner.ensemble): the mean of the members' word probabilities, against a
single decoder, brute force, one image at a time and real checkpoints through the CLIs."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_captioner_cli import assert_one_line_error, run_main
from test_captioner_decode import (
    DECODERS,
    END,
    START,
    UNK,
    assert_same_captions,
    make_decoder,
    random_features,
)
from test_captioner_model import tiny_model_cfg
from tiny_models import train_tiny_captioner

from captioner import caption as caption_cli
from captioner import evaluate as evaluate_cli
from captioner.config import CaptionerConfig
from captioner.data import Vocabulary, load_image_tensor
from captioner.decode import beam_search, greedy_decode
from captioner.encoder import ImageFeatures
from captioner.ensemble import (
    EnsembleDecoder,
    check_members,
    ensemble_from_payloads,
    load_ensemble,
)
from captioner.inference import Captioner, caption_images, load_captioner
from captioner.model import CaptionModel
from captioner.scoring import load_data_records
from recurrent.checkpoint import save_checkpoint
from recurrent.config import from_dict, to_dict
from recurrent.errors import UserError

# Two members that share nothing but the vocabulary: each (attention, cell, hidden size, grid
# positions, channels) -- soft or top-down attention against show-and-tell, LSTM against GRU.
PAIRS = [
    [(True, "lstm", 16, 6, 10), (False, "gru", 12, 4, 7)],
    [("top_down", "gru", 12, 4, 7), (False, "lstm", 20, 6, 10)],
]


def make_ensemble(specs, vocab: int, batch: int, end_bias: float = 0.0):
    """(EnsembleDecoder, each member's features, the packed features) for random images."""
    decoders, features = [], []
    for seed, (attention, cell, hidden, positions, channels) in enumerate(specs):
        decoders.append(
            make_decoder(
                attention, vocab, seed, end_bias, cell=cell, hidden_size=hidden, channels=channels
            )
        )
        features.append(random_features(batch, positions, channels, seed=seed + 5))
    ensemble = EnsembleDecoder(decoders)
    return ensemble, features, ensemble.pack(features)


@torch.no_grad()
def step_logprobs(decoder, features: ImageFeatures, row: int, ids: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log-probabilities (T-1, V) of image ``row`` reading ids (T,)."""
    one = features.index_select(torch.tensor([row]))
    logits, _ = decoder(one, ids[None], torch.tensor([ids.size(0)]))
    return F.log_softmax(logits[0].float(), dim=-1)


# --- the decoder ------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", DECODERS)
def test_an_ensemble_of_one_is_the_decoder(attention):
    """Beam search and greedy decoding over a one-member ensemble: the member's own captions,
    log-probabilities and attention maps, exactly."""
    decoder, features = make_decoder(attention), random_features(batch=5)
    ensemble = EnsembleDecoder([decoder])
    packed = ensemble.pack([features])
    settings = dict(max_length=7, start_id=START, end_id=END)
    for search in (
        lambda d, f: beam_search(d, f, beam_size=3, n_best=2, **settings),
        lambda d, f: [[c] for c in greedy_decode(d, f, **settings)],
    ):
        got, expected = search(ensemble, packed), search(decoder, features)
        for a, b in zip(got, expected, strict=True):
            assert [(c.tokens, c.finished) for c in a] == [(c.tokens, c.finished) for c in b]
            assert [c.logprob for c in a] == [c.logprob for c in b]
            for x, y in zip(a, b, strict=True):
                assert (x.attention is None) == (y.attention is None)
                if y.attention is not None:
                    assert torch.equal(x.attention, y.attention)


def test_decoders_and_features_that_cannot_go_together_are_refused():
    """No decoder, or decoders of other vocabularies; fewer or more feature sets than members;
    features packed for other grids (fewer or more positions); decoding before `pack`: each a
    ValueError (RuntimeError) naming it, never a silent misreading of the packed tensors."""
    with pytest.raises(ValueError, match="at least one decoder"):
        EnsembleDecoder([])
    with pytest.raises(ValueError, match="share the vocabulary"):
        EnsembleDecoder([make_decoder(False, vocab=6), make_decoder(True, vocab=7)])
    ensemble = EnsembleDecoder([make_decoder(False), make_decoder(True, seed=1)])
    features = random_features(batch=2)
    with pytest.raises(RuntimeError, match="pack the members' features"):
        ensemble.init_state(features)
    for count in (1, 3):
        with pytest.raises(ValueError, match=f"{count} feature sets for 2 members"):
            ensemble.pack([features] * count)
    ensemble.pack([features, features])
    for positions in (4, 8):
        other = EnsembleDecoder([make_decoder(False), make_decoder(True, seed=1)])
        packed = other.pack([random_features(batch=2, positions=positions)] * 2)
        with pytest.raises(ValueError, match="not packed for this ensemble"):
            ensemble.init_state(packed)


@pytest.mark.parametrize("specs", PAIRS)
def test_a_step_gives_the_log_of_the_members_mean_probabilities(specs):
    """One step from <start>: exp of what the ensemble returns is the mean of the members' own
    softmax, a distribution (not that up to a constant, which a beam's log-softmax would hide)."""
    ensemble, features, packed = make_ensemble(specs, vocab=9, batch=3)
    tokens = torch.full((3,), START)
    with torch.no_grad():
        logits, _, _ = ensemble.step(tokens, ensemble.init_state(packed), packed)
        expected = torch.stack(
            [
                F.softmax(d.step(tokens, d.init_state(f), f)[0].float(), dim=-1)
                for d, f in zip(ensemble.members, features, strict=True)
            ]
        ).mean(dim=0)  # (3, V)
    torch.testing.assert_close(logits.exp(), expected)
    torch.testing.assert_close(logits.exp().sum(dim=-1), torch.ones(3))


@pytest.mark.parametrize("specs", PAIRS)
def test_wide_beam_search_over_an_ensemble_is_exhaustive(specs):
    """A beam as wide as the whole search space (vocabulary of 4 specials + 2 words, 3 steps: 40
    captions) ranks captions exactly as brute force does, each scored as the sum over steps of
    log(mean over members of each member's teacher-forced probability)."""
    ensemble, features, packed = make_ensemble(specs, vocab=6, batch=2, end_bias=0.5)
    words, max_length = [UNK, 4, 5], 3
    candidates = [
        (tokens, True) for n in range(max_length) for tokens in itertools.product(words, repeat=n)
    ]
    candidates += [(tokens, False) for tokens in itertools.product(words, repeat=max_length)]
    results = beam_search(
        ensemble, packed, beam_size=40, max_length=max_length, start_id=START, end_id=END,
        n_best=10,
    )  # fmt: skip
    decoders = list(ensemble.members)
    for row in range(2):
        brute = []
        for tokens, finished in candidates:
            ids = torch.tensor([START, *tokens, *([END] if finished else [])])
            per_member = torch.stack(
                [
                    step_logprobs(d, f, row, ids).gather(1, ids[1:, None]).squeeze(1)
                    for d, f in zip(decoders, features, strict=True)
                ]
            )  # (M, steps)
            mean = torch.logsumexp(per_member, dim=0) - math.log(len(decoders))  # (steps,)
            brute.append((float(mean.sum()), list(tokens), finished))
        brute.sort(key=lambda item: -item[0])
        got = [(c.logprob, c.tokens, c.finished) for c in results[row]]
        assert [g[1:] for g in got] == [b[1:] for b in brute[:10]]
        assert [g[0] for g in got] == pytest.approx([b[0] for b in brute[:10]], abs=1e-4)


def test_batched_beam_search_over_an_ensemble_equals_one_image_at_a_time():
    """Three members (soft attention, show-and-tell, top-down): images settle and leave the
    batch at different steps, and every member's state, keys and grid must follow them."""
    specs = [*PAIRS[0], ("top_down", "lstm", 16, 4, 7)]
    ensemble, _, packed = make_ensemble(specs, vocab=12, batch=6, end_bias=-0.2)
    settings = dict(beam_size=3, max_length=7, start_id=START, end_id=END, n_best=2)
    batched = beam_search(ensemble, packed, **settings)
    assert len({len(c[0].tokens) for c in batched}) > 1  # images settle at different steps
    for row in range(6):
        [alone] = beam_search(ensemble, packed.index_select(torch.tensor([row])), **settings)
        assert_same_captions(batched[row], alone)
        assert batched[row][0].attention.shape[1] == 6  # the first attending member's grid, 6


def test_an_ensemble_decodes_with_the_first_members_settings_and_maps_the_attending_grid():
    """Members built in memory: a show-and-tell model over a 4 x 4 grid first, a top-down one
    attending over an 8 x 8 grid second, each with decoding settings of its own. The ensemble
    decodes with the first's (exactly 3 words here), and its attention maps are the attending
    member's, folded to that member's grid (they were folded to the first member's, and failed)."""
    vocab = ["<pad>", "<start>", "<end>", "<unk>", *"abcdefghi"]
    payloads = []
    for seed, (attention, stages, length) in enumerate([(False, 2, 3), ("top_down", 1, 9)]):
        torch.manual_seed(seed)
        model_cfg = tiny_model_cfg(
            attention=bool(attention), top_down=attention == "top_down", encoder_stages=stages
        )
        cfg = CaptionerConfig(model=model_cfg)
        cfg.data.image_size = 32
        cfg.decode.min_length = cfg.decode.max_length = length
        weights = CaptionModel(cfg, len(vocab)).state_dict()
        payloads.append({"config": to_dict(cfg), "vocab": vocab, "model": weights})
    ensemble = ensemble_from_payloads(payloads, ["first.pt", "second.pt"])
    first = from_dict(CaptionerConfig, payloads[0]["config"])
    first.train.precision = "fp32"  # what "auto" is taken to have been where none is recorded
    assert ensemble.cfg == first
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    [result] = caption_images(ensemble, [image])
    assert len(result.words) == 3
    with torch.no_grad():  # the second member's own grid
        grid_hw = ensemble.model.members[1].encode(ensemble.transform(image)[None]).grid_hw
    assert grid_hw == (8, 8)
    assert result.attention.shape == (3, *grid_hw)
    torch.testing.assert_close(result.attention.sum(dim=(1, 2)), torch.ones(3))


# --- checkpoints and the command lines ---------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, scenes_annotations: Path) -> dict:
    """Two tiny checkpoints of two steps on the scenes (soft attention / LSTM and top-down / GRU
    of another size), and copies of the first edited to another vocabulary or image size."""
    root = tmp_path_factory.mktemp("ensemble")
    first = train_tiny_captioner(root / "soft", scenes_annotations)
    second = train_tiny_captioner(
        root / "top_down", scenes_annotations, "model.top_down=true", "model.cell=gru",
        "model.hidden_size=24",
    )  # fmt: skip
    payload = torch.load(first, weights_only=True)
    vocab = list(payload["vocab"])
    vocab[5], vocab[6] = vocab[6], vocab[5]
    save_checkpoint({**payload, "vocab": vocab}, root / "vocab.pt")
    config = json.loads(json.dumps(payload["config"]))
    config["data"]["image_size"] = 40
    save_checkpoint({**payload, "config": config}, root / "size.pt")
    return {
        "first": str(first),
        "second": str(second),
        "vocab": str(root / "vocab.pt"),
        "swapped": (vocab[5], vocab[6]),
        "size": str(root / "size.pt"),
        "annotations": scenes_annotations,
    }


def test_loaded_ensemble_gives_the_mean_of_the_models_probabilities(checkpoints):
    """Each real member encodes the image itself: the ensemble's caption has the log-probability
    of its members' teacher-forced probabilities averaged per step; one path is the plain model."""
    paths = [checkpoints["first"], checkpoints["second"]]
    ensemble = load_ensemble(paths)
    single = load_captioner(paths[0])
    records = load_data_records(ensemble.cfg.data)[:2]
    images = [load_image_tensor(record.image_path) for record in records]
    results = caption_images(ensemble, images, beam_size=2, max_length=5)
    alone = caption_images(load_ensemble(paths[:1]), images, beam_size=2, max_length=5)
    assert [r.beams for r in alone] == [
        r.beams for r in caption_images(single, images, beam_size=2, max_length=5)
    ]
    members = [load_captioner(path) for path in paths]
    for image, result in zip(images, results, strict=True):
        ids = torch.tensor([START, *[ensemble.vocab.token_id(w) for w in result.words], END])
        steps = []
        for model in members:
            with torch.no_grad():
                features = model.model.encode(model.transform(image)[None])
            steps.append(step_logprobs(model.model.decoder, features, 0, ids))
        per_member = torch.stack([s.gather(1, ids[1:, None]).squeeze(1) for s in steps])
        mean = torch.logsumexp(per_member, dim=0) - math.log(2)
        finished = len(result.words) < 5
        expected = mean.sum() if finished else mean[:-1].sum()
        assert result.beams[0][1] == pytest.approx(float(expected), abs=1e-4)


def test_evaluate_and_caption_clis_decode_the_ensemble(checkpoints, tmp_path, capsys):
    paths = [checkpoints["first"], checkpoints["second"]]
    argv = [arg for path in paths for arg in ("--checkpoint", path)]
    predictions = tmp_path / "preds.json"
    flags = ["--json", "--no-meteor", "--beam-size", "2", "--predictions", str(predictions)]
    code, out, err = run_main(evaluate_cli.main, [*argv, *flags], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["checkpoints"] == paths and report["checkpoint"] == paths[0]
    records = load_data_records(load_ensemble(paths).cfg.data)
    test = [r for r in records if r.split == "test"]
    images = [load_image_tensor(r.image_path) for r in test]
    expected = caption_images(load_ensemble(paths), images, beam_size=2)
    assert [p["caption"] for p in json.loads(predictions.read_text())] == [
        r.caption for r in expected
    ]
    code, out, err = run_main(evaluate_cli.main, [*argv, "--no-meteor"], capsys)
    assert code == 0, err
    named = f"ensemble of 2 checkpoints (mean of their word probabilities): {', '.join(paths)}"
    assert named in out.splitlines()
    image = str(test[0].image_path)
    code, out, err = run_main(
        caption_cli.main, [*argv, image, "--json", "--beam-size", "2"], capsys
    )
    assert code == 0, err
    payload = json.loads(out)
    assert payload["checkpoints"] == paths and payload["checkpoint"] == paths[0]
    assert payload["results"][0]["caption"] == expected[0].caption


@pytest.mark.parametrize(
    "other,fragments",
    [
        ("vocab", ["different vocabularies", "id 5"]),
        ("size", ["data.image_size", "(32 vs 40)"]),
    ],
)
def test_members_that_cannot_decode_together_give_one_line(checkpoints, capsys, other, fragments):
    argv = ["--checkpoint", checkpoints["first"], "--checkpoint", checkpoints[other]]
    code, _, err = run_main(evaluate_cli.main, [*argv, "--no-meteor"], capsys)
    assert_one_line_error(code, err, checkpoints["first"], checkpoints[other], *fragments)
    if other == "vocab":
        assert all(repr(word) in err for word in checkpoints["swapped"])
    records = load_data_records(load_captioner(checkpoints["first"]).cfg.data)
    code, _, err = run_main(caption_cli.main, [*argv, str(records[0].image_path)], capsys)
    assert_one_line_error(code, err, checkpoints["first"], checkpoints[other], *fragments)


def test_members_that_normalise_images_differently_are_refused(monkeypatch):
    """Every torchvision ResNet normalises with ImageNet's statistics, so the check is driven by
    a stand-in for `normalization_stats` that gives resnet18 other ones."""
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    other = ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    monkeypatch.setattr(
        "captioner.ensemble.normalization_stats",
        lambda weights, arch: other if arch == "resnet18" else imagenet,
    )
    words = Vocabulary.from_list(["<pad>", "<start>", "<end>", "<unk>", "a"])
    members = []
    for encoder in ("resnet50", "resnet50", "resnet18"):
        cfg = CaptionerConfig()
        cfg.model.encoder = encoder
        members.append(Captioner(None, words, cfg, None, torch.device("cpu")))
    check_members(members[:2], ["a.pt", "b.pt"])
    with pytest.raises(UserError, match="normalise images differently") as refused:
        check_members(members, ["a.pt", "b.pt", "c.pt"])
    assert "a.pt and c.pt" in str(refused.value)


def test_the_members_are_called_by_the_names_given_and_none_is_refused(checkpoints):
    """`load_ensemble`'s ``names`` (the app's model names) stand for the paths in its one line;
    no checkpoint at all is one line too."""
    with pytest.raises(UserError, match="first model and other model have different") as refused:
        load_ensemble(
            [checkpoints["first"], checkpoints["vocab"]], names=["first model", "other model"]
        )
    assert checkpoints["first"] not in str(refused.value)
    with pytest.raises(UserError, match="no checkpoint given"):
        ensemble_from_payloads([], [])


def test_a_vocabulary_that_is_the_others_with_words_added_is_named_in_one_line():
    """The first id that differs lies past the shorter vocabulary's end: it is named as "none"
    on that side, in the one line (not an IndexError's traceback)."""
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "circle"]
    members = [
        Captioner(None, Vocabulary.from_list(vocab), CaptionerConfig(), None, torch.device("cpu"))
        for vocab in (words, [*words, "square"])
    ]
    for order in (members, members[::-1]):
        with pytest.raises(UserError, match="different vocabularies") as refused:
            check_members(order, ["a.pt", "b.pt"])
        message = str(refused.value)
        assert "id 6: " in message and "'square'" in message and "none" in message
        assert "\n" not in message
