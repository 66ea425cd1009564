"""The captioner's encoder, decoder and model: shapes, weights, fine-tuning, loss and step agreement."""

from __future__ import annotations

import io
import math
import urllib.error
import urllib.request
import zipfile
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import WeightsEnum, get_model

from captioner.config import CaptionerConfig, ModelConfig, check_config
from captioner.data.transforms import resolve_weights
from captioner.decode import greedy_decode
from captioner.decoder import CaptionDecoder
from captioner.encoder import ImageEncoder, ImageFeatures
from captioner.inference import captioner_from_payload
from captioner.model import CaptionModel
from recurrent.config import to_dict
from recurrent.errors import UserError

VOCAB, PAD, START, END = 13, 0, 1, 2
CHANNELS = {"resnet18": (64, 128, 256, 512), "resnet50": (256, 512, 1024, 2048)}


def tiny_model_cfg(**overrides) -> ModelConfig:
    base = ModelConfig(
        encoder="resnet18",
        weights=None,
        encoder_stages=2,
        embed_size=8,
        hidden_size=12,
        attention_size=6,
        dropout=0.0,
    )
    return replace(base, **overrides)


def random_features(batch: int = 3, grid_hw=(2, 3), channels: int = 10, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randn(batch, grid_hw[0] * grid_hw[1], channels, generator=generator)
    return ImageFeatures(grid.mean(dim=1), grid, grid_hw)


def padded_captions():
    """Three captions of lengths 5, 3 and 4 ids (with <start> and <end>), padded to 5."""
    captions = torch.tensor(
        [[START, 5, 6, 7, END], [START, 8, END, PAD, PAD], [START, 9, 4, END, PAD]]
    )
    return captions, torch.tensor([5, 3, 4])


def make_decoder(attention: bool | str, cell: str = "lstm", seed: int = 0, **overrides):
    """``attention``: False (show and tell), True (soft attention) or "top_down"."""
    torch.manual_seed(seed)
    overrides.setdefault("top_down", attention == "top_down")
    cfg = tiny_model_cfg(attention=bool(attention), cell=cell, **overrides)
    return CaptionDecoder(cfg, VOCAB, feature_channels=10).eval()


# --- encoder ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,stages,size",
    [
        ("resnet18", 1, 32),
        ("resnet18", 2, 48),
        ("resnet18", 3, 64),
        ("resnet18", 4, 64),
        ("resnet50", 4, 32),
    ],
)
def test_encoder_shapes_and_grid_layout(arch, stages, size):
    torch.manual_seed(0)
    encoder = ImageEncoder(tiny_model_cfg(encoder=arch, encoder_stages=stages)).eval()
    images = torch.randn(2, 3, size, size)
    features = encoder(images)
    side = -(-size // 2 ** (stages + 1))  # the stem divides by 4, each stage after layer1 by 2
    channels = CHANNELS[arch][stages - 1]
    assert encoder.out_channels == channels
    assert features.grid_hw == (side, side)
    assert features.grid.shape == (2, side * side, channels)
    assert features.pooled.shape == (2, channels)
    feature_map = encoder.body(images)  # (B, C, h, w)
    # Row-major flattening: position r * w + c holds the map's pixel (r, c).
    row, col = side - 1, 0
    torch.testing.assert_close(features.grid[:, row * side + col], feature_map[:, :, row, col])
    torch.testing.assert_close(features.pooled, feature_map.mean(dim=(2, 3)))


def test_encoder_loads_local_state_dict_and_matches_torchvision(tmp_path):
    torch.manual_seed(1)
    reference = get_model("resnet18", weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # a plain torchvision state_dict, fc.* included
    torch.manual_seed(2)  # a different random init, to be overwritten by the file
    encoder = ImageEncoder(tiny_model_cfg(weights=str(path), encoder_stages=4)).eval()
    torch.testing.assert_close(
        encoder.body.layer3[1].conv2.weight, reference.layer3[1].conv2.weight
    )
    torch.testing.assert_close(encoder.body.bn1.running_var, reference.bn1.running_var)
    # the same weights saved from DataParallel ("module." names) inside a training script's
    # {"state_dict": ..., "epoch": ...}
    wrapped = tmp_path / "wrapped.pth"
    state = {f"module.{name}": value for name, value in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, wrapped)
    again = ImageEncoder(tiny_model_cfg(weights=str(wrapped), encoder_stages=4)).eval()
    for name, value in encoder.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    # The pooled vector is what torchvision's classifier head reads (the input of fc).
    reference.fc = torch.nn.Identity()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images).pooled, reference(images), atol=1e-5, rtol=1e-4)


def test_encoder_convolves_channels_last_and_keeps_the_layout_through_a_checkpoint():
    """The encoder's convolutions run in the NHWC layout (oneDNN's and cuDNN's fast path): a
    state_dict saved and loaded into a fresh encoder keeps that layout and the same features."""
    torch.manual_seed(0)
    encoder = ImageEncoder(tiny_model_cfg(encoder_stages=3)).eval()
    torch.manual_seed(1)
    fresh = ImageEncoder(tiny_model_cfg(encoder_stages=3)).eval()
    buffer = io.BytesIO()
    torch.save(encoder.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    weights = [m.weight for m in fresh.modules() if isinstance(m, torch.nn.Conv2d)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    images = torch.randn(2, 3, 64, 64)  # NCHW, as the data pipeline makes them
    with torch.no_grad():
        torch.testing.assert_close(fresh(images).grid, encoder(images).grid, atol=0, rtol=0)


@pytest.mark.parametrize(("encoder", "named"), [("resnet18", "ResNet18"), ("resnet34", "ResNet34")])
def test_a_missing_weights_file_names_weights_of_the_configs_encoder(tmp_path, encoder, named):
    """The weights name the line suggests is one of model.encoder's own: another's (ResNet50's
    for a resnet18) is refused as not its weights when passed."""
    with pytest.raises(UserError) as refused:
        ImageEncoder(tiny_model_cfg(encoder=encoder, weights=str(tmp_path / "missing.pth")))
    assert f"a torchvision weights name such as {named}_Weights.DEFAULT, or null" in str(
        refused.value
    )
    assert resolve_weights(f"{named}_Weights.DEFAULT", encoder).name == "IMAGENET1K_V1"


def test_encoder_weights_errors(tmp_path, monkeypatch, capfd):
    with pytest.raises(UserError, match="not found"):
        ImageEncoder(tiny_model_cfg(weights=str(tmp_path / "missing.pth")))
    state = get_model("resnet18", weights=None).state_dict()
    del state["layer2.0.conv1.weight"]
    state["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(UserError, match=r"missing keys.*layer2\.0\.conv1\.weight.*conv1\.weight"):
        ImageEncoder(tiny_model_cfg(weights=str(bad)))
    # rebuilt with compression (torch.save never compresses; a zip bomb's shape): refused unread
    packed = tmp_path / "packed.pth"
    torch.save(get_model("resnet18", weights=None).state_dict(), bad)
    with zipfile.ZipFile(bad) as source, zipfile.ZipFile(packed, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename), zipfile.ZIP_DEFLATED)
    with pytest.raises(UserError, match=r"packed\.pth has compressed parts .* refused unread"):
        ImageEncoder(tiny_model_cfg(weights=str(packed)))
    garbage = tmp_path / "garbage.pth"
    for text in (b"not a checkpoint", b"hello", b"hi\n"):  # "h" and "i" fetch pickle memo
        garbage.write_bytes(text)  # entries that do not exist: a KeyError inside torch.load
        with pytest.raises(UserError, match="not a readable"):
            ImageEncoder(tiny_model_cfg(weights=str(garbage)))
    with pytest.raises(UserError, match="not torchvision weights for resnet18"):
        ImageEncoder(tiny_model_cfg(weights="ResNet50_Weights.DEFAULT"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    # Offline, the one line is all: torch.hub's "Downloading: ..." used to come first.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="could not download.*no network.*pass the file's path"):
        ImageEncoder(tiny_model_cfg(weights="ResNet18_Weights.DEFAULT"))
    assert "Downloading" not in capfd.readouterr().err
    monkeypatch.undo()
    # The network answers the probe, the download itself fails: the same line.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO())
    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match="could not download.*pass the file's path"):
        ImageEncoder(tiny_model_cfg(weights="ResNet18_Weights.DEFAULT"))


def test_finetune_modes():
    frozen = ImageEncoder(tiny_model_cfg(encoder_stages=3, finetune="frozen")).train()
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not any(m.training for m in frozen.modules())  # BatchNorm keeps its statistics
    before = frozen.body.layer1[0].bn1.running_mean.clone()
    frozen(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(frozen.body.layer1[0].bn1.running_mean, before, rtol=0, atol=0)

    everything = ImageEncoder(tiny_model_cfg(encoder_stages=3, finetune="all")).train()
    assert all(p.requires_grad for p in everything.parameters())
    assert all(m.training for m in everything.modules())

    last = ImageEncoder(tiny_model_cfg(encoder_stages=3, finetune="last", finetune_stages=1))
    last.train()
    for name, param in last.named_parameters():
        assert param.requires_grad == name.startswith("body.layer3."), name
    assert last.body.layer3[0].bn1.training and not last.body.layer2[0].bn1.training
    assert not last.body.bn1.training
    last(torch.randn(2, 3, 32, 32)).pooled.sum().backward()
    assert last.body.layer3[0].conv1.weight.grad is not None
    assert last.body.layer2[0].conv1.weight.grad is None

    two = ImageEncoder(tiny_model_cfg(encoder_stages=3, finetune="last", finetune_stages=2))
    for name, param in two.named_parameters():  # layer2 and layer3; not layer1 or the stem
        assert param.requires_grad == name.startswith(("body.layer2.", "body.layer3.")), name
    # as built (a module starts in training mode): its frozen part keeps its statistics already
    assert two.body.layer2[0].bn1.training and not two.body.layer1[0].bn1.training

    # More stages than kept: the stem trains too.
    whole = ImageEncoder(tiny_model_cfg(encoder_stages=1, finetune="last", finetune_stages=2))
    assert all(p.requires_grad for p in whole.parameters())
    with pytest.raises(UserError, match="finetune_stages"):
        ImageEncoder(tiny_model_cfg(finetune="last", finetune_stages=0))


def test_features_select_and_move_the_pooled_vector_and_the_grid_alike():
    grid = torch.arange(2 * 3 * 4.0).view(2, 3, 4)
    features = ImageFeatures(grid.mean(dim=1), grid, (1, 3))
    picked = features.index_select(torch.tensor([1, 1, 0]))  # e.g. image 1 for two beams
    assert torch.equal(picked.grid, grid[[1, 1, 0]])
    assert torch.equal(picked.pooled, grid.mean(dim=1)[[1, 1, 0]])
    moved = features.to("meta")
    assert moved.pooled.device.type == moved.grid.device.type == "meta"
    assert picked.grid_hw == moved.grid_hw == (1, 3)


def test_a_weights_file_that_is_not_the_encoders_state_dict_says_what_is_wrong(tmp_path):
    """Safetensors, bytes torch.load fails on, a dict of other values, a deeper ResNet's weights
    (every key of the resnet18 there, with its shape, and 12 more) and a tensor of another
    shape: each refused in one line that names what it found and what to pass."""
    (tmp_path / "resnet.safetensors").write_bytes(b"{}")
    with pytest.raises(UserError, match=r"are safetensors; save them as a torch state_dict"):
        ImageEncoder(tiny_model_cfg(weights=str(tmp_path / "resnet.safetensors")))
    garbage = tmp_path / "garbage.pth"  # pickle opcodes that pop an empty stack
    for data in (b"every word", b"."):
        garbage.write_bytes(data)  # an IndexError inside torch.load
        with pytest.raises(UserError, match="is not a readable torch state_dict"):
            ImageEncoder(tiny_model_cfg(weights=str(garbage)))
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(UserError, match=r"does not hold a state_dict \(a dict of tensors\)"):
        ImageEncoder(tiny_model_cfg(weights=str(tmp_path / "mixed.pth")))
    resnet18 = get_model("resnet18", weights=None).state_dict()
    deeper = dict(resnet18)  # a third block in layer1, as a ResNet-34 has
    deeper.update(
        {
            k.replace("layer1.1.", "layer1.2."): v
            for k, v in resnet18.items()
            if k.startswith("layer1.1.")
        }
    )
    torch.save(deeper, tmp_path / "deeper.pth")
    with pytest.raises(UserError) as refused:
        ImageEncoder(tiny_model_cfg(weights=str(tmp_path / "deeper.pth")))
    said = str(refused.value)
    assert "does not match a torchvision resnet18: 12 unexpected keys (e.g. layer1.2." in said
    assert said.endswith("; pass a state_dict of model.encoder=resnet18")
    wide = {**resnet18, "conv1.weight": torch.zeros(8, 3, 7, 7)}
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(UserError) as refused:
        ImageEncoder(tiny_model_cfg(weights=str(tmp_path / "wide.pth")))
    assert (
        "1 keys of another shape (e.g. conv1.weight: (8, 3, 7, 7) in the file, "
        "(64, 3, 7, 7) in resnet18)" in str(refused.value)
    )


def test_weights_in_torch_hubs_cache_load_offline_and_a_refused_probe_still_downloads(
    tmp_path, monkeypatch
):
    """A weights name whose file torch.hub has cached loads without the network; a server that
    answers the probe with an HTTP error (a HEAD it does not allow) is left to the download."""
    torch.manual_seed(3)
    saved = get_model("resnet18", weights=None).state_dict()

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cached = ImageEncoder(tiny_model_cfg(weights="ResNet18_Weights.DEFAULT", encoder_stages=1))
    assert torch.equal(cached.body.conv1.weight, saved["conv1.weight"])

    def refuses_head(request, *args, **kwargs):
        raise urllib.error.HTTPError(request.full_url, 405, "Method Not Allowed", {}, None)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty"))
    monkeypatch.setattr(urllib.request, "urlopen", refuses_head)
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: saved)
    fetched = ImageEncoder(tiny_model_cfg(weights="ResNet18_Weights.DEFAULT", encoder_stages=1))
    assert torch.equal(fetched.body.conv1.weight, saved["conv1.weight"])


def test_an_encoder_that_is_not_a_resnet_is_refused_in_one_line():
    with pytest.raises(UserError, match="unknown model.encoder 'vgg11'; use one of resnet18, "):
        ImageEncoder(tiny_model_cfg(encoder="vgg11"))


@pytest.mark.parametrize("stages", [2, 3, 5])
def test_finetuning_more_stages_than_kept_trains_the_whole_encoder(stages):
    """finetune=last with more stages than the encoder keeps (1 here, 2 units with the stem):
    every parameter trains, every module is in training mode, and every one gets a gradient."""
    cfg = tiny_model_cfg(encoder_stages=1, finetune="last", finetune_stages=stages)
    encoder = ImageEncoder(cfg).train()
    assert all(p.requires_grad for p in encoder.parameters())
    assert all(m.training for m in encoder.modules())
    encoder(torch.randn(2, 3, 32, 32)).pooled.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_a_grid_taller_than_wide_keeps_its_rows_and_columns():
    torch.manual_seed(0)
    encoder = ImageEncoder(tiny_model_cfg(encoder_stages=2)).eval()
    images = torch.randn(2, 3, 64, 32)  # (B, 3, H, W): 8 x 4 positions after two stages
    with torch.no_grad():
        features, feature_map = encoder(images), encoder.body(images)
    assert features.grid_hw == (8, 4) and features.grid.shape == (2, 32, 128)
    for row, col in [(7, 0), (0, 3), (5, 2)]:
        torch.testing.assert_close(features.grid[:, row * 4 + col], feature_map[:, :, row, col])


# --- decoder and model --------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [False, True, "top_down"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_model_shapes_and_gradients(attention, cell):
    torch.manual_seed(0)
    model_cfg = tiny_model_cfg(
        attention=bool(attention), top_down=attention == "top_down", cell=cell, num_layers=2
    )
    cfg = CaptionerConfig(model=model_cfg)
    model = CaptionModel(cfg, VOCAB).train()
    images = torch.randn(3, 3, 32, 32)
    captions, lengths = padded_captions()
    features = model.encode(images)
    assert features.grid.shape == (3, 16, 128)
    state = model.decoder.init_state(features)
    layers = 3 if attention == "top_down" else 2  # the attention core's layer above the two
    assert state.shape == (2 if cell == "lstm" else 1, layers, 3, 12)
    logits, state, alpha = model.decoder.step(captions[:, 0], state, features)
    assert logits.shape == (3, VOCAB)
    assert (alpha is None) == (not attention)
    logits, loss = model(images, captions, lengths)
    assert logits.shape == (3, 4, VOCAB)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())  # frozen by default


def test_the_model_hands_its_decoder_the_features_and_every_setting():
    """`CaptionModel.forward` on images equals the decoder on their encoded features with the
    same predicted-word count, label smoothing and scheduled sampling (the same draws under the
    same seed), takes cached features in place of images, hands a self-critical objective the
    decoder and the features, and refuses cross-entropy without captions or lengths."""
    torch.manual_seed(0)
    model = CaptionModel(CaptionerConfig(model=tiny_model_cfg(attention=True)), VOCAB).train()
    images = torch.randn(3, 3, 32, 32)
    captions, lengths = padded_captions()
    features = model.encode(images)
    settings = dict(label_smoothing=0.2, sampling_prob=0.5)
    torch.manual_seed(1)
    logits, loss = model(images, captions, lengths, torch.tensor(7.0), **settings)
    torch.manual_seed(1)
    expected = model.decoder(features, captions, lengths, torch.tensor(7.0), **settings)
    torch.testing.assert_close((logits, loss), expected)
    torch.manual_seed(1)
    torch.testing.assert_close(
        model(features, captions, lengths, torch.tensor(7.0), **settings), expected
    )
    seen = []
    objective = lambda decoder, given: seen.append((decoder, given)) or "its loss"  # noqa: E731
    assert model(images, self_critical=objective) == "its loss"
    [(decoder, given)] = seen
    assert decoder is model.decoder
    torch.testing.assert_close(given.grid, features.grid)
    with pytest.raises(ValueError, match="needs captions and lengths"):
        model(images, captions)


@pytest.mark.parametrize("attention", [False, True, "top_down"])
def test_loss_ignores_padding(attention):
    decoder = make_decoder(attention)
    features = random_features()
    captions, lengths = padded_captions()
    logits, loss = decoder(features, captions, lengths)
    # Garbage past each caption's length and two extra columns of padding change nothing.
    garbage = captions.clone()
    garbage[1, 3:] = torch.tensor([7, 9])
    garbage[2, 4] = 5
    longer = torch.cat([garbage, torch.full((3, 2), PAD)], dim=1)
    logits2, loss2 = decoder(features, longer, lengths)
    torch.testing.assert_close(loss2, loss)
    for row, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(logits2[row, : length - 1], logits[row, : length - 1])


@pytest.mark.parametrize(
    "attention,cell,overrides",
    [
        (False, "lstm", {}),
        (False, "gru", {"num_layers": 2}),
        (False, "rnn", {"backend": "explicit"}),
        (False, "lstm", {"tied_embeddings": True}),
        (True, "lstm", {}),
        (True, "gru", {"num_layers": 2, "tied_embeddings": True, "embed_size": 12}),
        (True, "rnn", {}),
        ("top_down", "lstm", {}),
        ("top_down", "gru", {"num_layers": 2, "tied_embeddings": True, "embed_size": 12}),
        ("top_down", "rnn", {"backend": "explicit"}),
    ],
)
def test_teacher_forcing_matches_stepping_and_loss_reference(attention, cell, overrides):
    """forward's logits equal step() one token at a time, and its loss equals the cross-entropy of
    the real targets plus alpha_c times the doubly stochastic regulariser, both computed here."""
    decoder = make_decoder(attention, cell, alpha_c=0.7, **overrides)
    features = random_features()
    captions, lengths = padded_captions()
    logits, loss = decoder(features, captions, lengths)
    nll, count, regularizer = 0.0, 0, 0.0
    for row, length in enumerate(lengths.tolist()):
        one = features.index_select(torch.tensor([row]))
        state = decoder.init_state(one)
        attention_sum = torch.zeros(features.grid.size(1))
        for t in range(length - 1):
            step_logits, state, alpha = decoder.step(captions[row, t : t + 1], state, one)
            torch.testing.assert_close(logits[row, t], step_logits[0], atol=1e-5, rtol=1e-5)
            nll -= F.log_softmax(step_logits[0], dim=-1)[captions[row, t + 1]]
            count += 1
            if attention:
                torch.testing.assert_close(alpha.sum(), torch.tensor(1.0))
                attention_sum += alpha[0]
        regularizer += ((1 - attention_sum) ** 2).sum()
    # Both terms per predicted word: the paper's objective (summed over words) divided by count.
    expected = (nll + (0.7 * regularizer if attention else 0.0)) / count
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("num_layers", [1, 2])
def test_top_down_decoder_follows_anderson_et_al_equations(num_layers):
    """The top-down decoder's logits and attention, step by step, against Anderson et al.'s
    equations (2018, section 3.2.1) written out with torch.nn.LSTMCell on the decoder's own
    weights: the attention LSTM reads [h2_{t-1}, mean feature, word], its output h1 queries the
    grid, the language LSTM reads [attended feature, h1] and its output h2 gives the logits. With
    a language LSTM of two layers, h2 is its top layer's output, and the attention LSTM reads that
    one (not the language LSTM's first layer, whose state sits next to the attention LSTM's)."""
    decoder = make_decoder("top_down", alpha_c=0.0, num_layers=num_layers)
    features = random_features(batch=2)
    captions, _ = padded_captions()

    def lstm_cells(core):
        cells = []
        for layer in range(core.num_layers):
            size = core.input_size if layer == 0 else core.hidden_size
            cell = torch.nn.LSTMCell(size, core.hidden_size)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(core.rnn, f"{name}_l{layer}"))
            cells.append(cell)
        return cells

    [attention_cell] = lstm_cells(decoder.attention_core)
    language_cells = lstm_cells(decoder.core)
    attention = decoder.attention
    state = decoder.init_state(features)  # (2, 1 + L, B, H): the attention LSTM's, then language's
    assert state.shape[1] == 1 + num_layers
    h, c = list(state[0]), list(state[1])  # per layer (B, H): [attention, language 1 .. L]
    keys = decoder.attention_keys(features)
    for t in range(3):
        word = decoder.embedding(captions[:2, t])
        x1 = torch.cat([h[-1], features.grid.mean(dim=1), word], dim=-1)
        h[0], c[0] = attention_cell(x1, (h[0], c[0]))
        energy = attention.feature_proj(features.grid) + attention.hidden_proj(h[0])[:, None]
        alpha = torch.softmax(attention.score(torch.tanh(energy)).squeeze(-1), dim=-1)  # (B, N)
        attended = (alpha[..., None] * features.grid).sum(dim=1)  # (B, C)
        x = torch.cat([attended, h[0]], dim=-1)
        for layer, cell in enumerate(language_cells, start=1):
            h[layer], c[layer] = cell(x, (h[layer], c[layer]))
            x = h[layer]
        logits, state, got_alpha = decoder.step(captions[:2, t], state, features, keys)
        torch.testing.assert_close(logits, decoder.output(h[-1]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_alpha, alpha, atol=1e-5, rtol=1e-5)
    assert decoder.f_beta is None  # no gate on the attended feature: the paper has none


@pytest.mark.parametrize("attention", [False, True])
def test_predicted_words_given_divide_the_summed_loss_instead_of_the_batchs_count(attention):
    """Under torchrun the loss is divided by the global batch's predicted words per process
    (``predicted_words``), not this batch's own count (here 9)."""
    decoder = make_decoder(attention, alpha_c=0.7)
    features = random_features()
    captions, lengths = padded_captions()
    _, mean = decoder(features, captions, lengths)
    _, loss = decoder(features, captions, lengths, torch.tensor(12.5))
    torch.testing.assert_close(loss, mean * 9 / 12.5)


@torch.no_grad()
@pytest.mark.parametrize("num_layers", [1, 2])
def test_soft_attention_decoder_follows_xu_et_als_equations(num_layers):
    """The soft-attention decoder's logits and attention, step by step, against Xu et al.'s
    equations (2015, sections 3.1.2 and 4.2.1) written out with torch.nn.LSTMCell on the
    decoder's own weights: the previous top-layer output h scores the grid, the attended feature
    is scaled by the gate beta = sigmoid(f_beta(h)), the LSTM reads [word, beta * attended], and its
    top layer's output gives the logits. With two layers, h is the top layer's (not the first's)."""
    decoder = make_decoder(True, alpha_c=0.0, num_layers=num_layers)
    features = random_features(batch=2)
    captions, _ = padded_captions()
    cells = []
    for layer in range(num_layers):
        size = decoder.core.input_size if layer == 0 else decoder.core.hidden_size
        cell = torch.nn.LSTMCell(size, decoder.core.hidden_size)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(decoder.core.rnn, f"{name}_l{layer}"))
        cells.append(cell)
    attention = decoder.attention
    state = decoder.init_state(features)
    h, c = list(state[0]), list(state[1])  # per layer (B, H)
    keys = decoder.attention_keys(features)
    for t in range(3):
        energy = attention.feature_proj(features.grid) + attention.hidden_proj(h[-1])[:, None]
        alpha = torch.softmax(attention.score(torch.tanh(energy)).squeeze(-1), dim=-1)  # (B, N)
        attended = (alpha[..., None] * features.grid).sum(dim=1)  # (B, C)
        beta = torch.sigmoid(decoder.f_beta(h[-1]))  # (B, 1)
        x = torch.cat([decoder.embedding(captions[:2, t]), beta * attended], dim=-1)
        for layer, cell in enumerate(cells):
            h[layer], c[layer] = cell(x, (h[layer], c[layer]))
            x = h[layer]
        logits, state, got_alpha = decoder.step(captions[:2, t], state, features, keys)
        torch.testing.assert_close(logits, decoder.output(h[-1]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_alpha, alpha, atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("attention,cell", [(False, "lstm"), (True, "gru"), ("top_down", "lstm")])
def test_initial_state_is_tanh_of_the_projected_image_vector_each_variant_reads(attention, cell):
    """init_state is tanh(W f + b) read as (S, L, B, H): the LSTM's h then c, each layer's H
    values in turn; f is the pooled vector for show-and-tell and the grid's mean for attention
    (here unlike the pooled vector, which an encoder's features never are)."""
    decoder = make_decoder(attention, cell, num_layers=2)
    grid = random_features().grid
    features = ImageFeatures(torch.randn(3, 10), grid, (2, 3))
    image = grid.mean(dim=1) if attention else features.pooled
    values = torch.tanh(decoder.init_proj(image))  # (B, S*L*H)
    parts, layers = (2 if cell == "lstm" else 1), (3 if attention == "top_down" else 2)
    state = decoder.init_state(features)
    assert state.shape == (parts, layers, 3, 12)
    for part in range(parts):
        for layer in range(layers):
            start = (part * layers + layer) * 12
            torch.testing.assert_close(state[part, layer], values[:, start : start + 12])


def test_dropout_between_the_cores_layers_and_on_its_output_as_torch_nn_does():
    """``model.dropout`` in training: between the stacked core's layers, as torch.nn.LSTM's
    dropout (the same draws), and on the top layer's output before the word logits; none in
    eval mode."""
    decoder = make_decoder(False, num_layers=2, dropout=0.5).train()
    features, tokens = random_features(), torch.tensor([START, 5, 6])
    reference = torch.nn.LSTM(8, 12, num_layers=2, dropout=0.5, batch_first=True)
    reference.load_state_dict(decoder.core.rnn.state_dict())
    state = decoder.init_state(features)
    embedded = decoder.embedding(tokens)[:, None]  # (B, 1, E)
    torch.manual_seed(1)
    logits, _, _ = decoder.step(tokens, state, features)
    torch.manual_seed(1)
    outputs, _ = reference(embedded, (state[0], state[1]))
    mask = F.dropout(torch.ones_like(outputs[:, 0]), 0.5, training=True)
    torch.testing.assert_close(logits, decoder.output(outputs[:, 0] * mask))
    decoder.eval(), reference.eval()
    outputs, _ = reference(embedded, (state[0], state[1]))
    torch.testing.assert_close(
        decoder.step(tokens, state, features)[0], decoder.output(outputs[:, 0])
    )


def test_top_down_needs_attention():
    with pytest.raises(ValueError, match="top_down needs model.attention"):
        make_decoder(False, top_down=True)
    cfg = CaptionerConfig(model=tiny_model_cfg(attention=False, top_down=True))
    cfg.data.annotations = "x.json"
    with pytest.raises(UserError, match="model.top_down needs model.attention: true"):
        check_config(cfg)
    # A checkpoint whose config was edited so: one line naming the file, not the decoder's error.
    weights = CaptionModel(CaptionerConfig(model=tiny_model_cfg()), VOCAB).state_dict()
    vocab = ["<pad>", "<start>", "<end>", "<unk>", *"abcdefghi"]
    payload = {"config": to_dict(cfg), "vocab": vocab, "model": weights}
    with pytest.raises(UserError, match="edited.pt does not fit .* model.top_down needs"):
        captioner_from_payload(payload, source="edited.pt")


def test_a_checkpoint_trained_from_imagenet_weights_loads_without_downloading_them(monkeypatch):
    """The checkpoint holds every weight, the encoder's too: a config naming torchvision's
    ImageNet weights builds its model without them (nothing downloaded, offline or not), holds
    exactly the checkpoint's weights, and keeps the name (its normalisation statistics)."""
    import captioner.encoder as encoder_module

    def no_download(url: str) -> None:
        raise AssertionError(f"a download of {url} was started")

    monkeypatch.setattr(encoder_module, "_check_reachable", no_download)
    cfg = CaptionerConfig(model=tiny_model_cfg())
    cfg.data.annotations = "x.json"
    weights = CaptionModel(CaptionerConfig(model=tiny_model_cfg()), VOCAB).state_dict()
    vocab = ["<pad>", "<start>", "<end>", "<unk>", *"abcdefghi"]
    config = to_dict(cfg)
    config["model"]["weights"] = "ResNet18_Weights.DEFAULT"
    captioner = captioner_from_payload({"config": config, "vocab": vocab, "model": weights})
    loaded = captioner.model.state_dict()
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[key], weights[key]) for key in weights)
    assert captioner.cfg.model.weights == "ResNet18_Weights.DEFAULT"


@pytest.mark.parametrize(
    "section, key, value, said",
    [
        ("decode", "beam_size", 101, "config key 'decode.beam_size' must be in [1, 100], got 101"),
        ("model", "hidden_size", 0, "config key 'model.hidden_size' must be in"),
    ],
)
def test_a_checkpoint_whose_config_is_out_of_its_bounds_does_not_fit(section, key, value, said):
    """A checkpoint's config is checked against the config's bounds as a YAML file's is: an
    edited value out of them is one line naming the file and the key, before any model is
    built."""
    cfg = CaptionerConfig(model=tiny_model_cfg())
    cfg.data.annotations = "x.json"
    weights = CaptionModel(CaptionerConfig(model=tiny_model_cfg()), VOCAB).state_dict()
    vocab = ["<pad>", "<start>", "<end>", "<unk>", *"abcdefghi"]
    config = to_dict(cfg)
    config[section][key] = value
    with pytest.raises(UserError) as caught:
        captioner_from_payload({"config": config, "vocab": vocab, "model": weights}, source="e.pt")
    assert str(caught.value).startswith(f"e.pt does not fit this version of the captioner: {said}")


def test_a_checkpoint_without_its_vocabulary_says_which_file_to_pass():
    cfg = CaptionerConfig(model=tiny_model_cfg())
    cfg.data.annotations = "x.json"
    weights = CaptionModel(CaptionerConfig(model=tiny_model_cfg()), VOCAB).state_dict()
    with pytest.raises(UserError) as caught:
        captioner_from_payload({"config": to_dict(cfg), "model": weights}, source="e.pt")
    assert str(caught.value) == "e.pt lacks 'vocab'; pass a checkpoint written by captioner.train"


def test_a_checkpoint_missing_a_tensor_names_it():
    """Weights that lack a tensor, or hold another shape, are named by the tensor (not torch's
    several-line load_state_dict error)."""
    cfg = CaptionerConfig(model=tiny_model_cfg())
    cfg.data.annotations = "x.json"
    vocab = ["<pad>", "<start>", "<end>", "<unk>", *"abcdefghi"]
    weights = CaptionModel(CaptionerConfig(model=tiny_model_cfg()), VOCAB).state_dict()
    name = next(key for key in weights if key.endswith("output.bias"))
    shape = tuple(weights[name].shape)
    lacking = {key: value for key, value in weights.items() if key != name}
    with pytest.raises(UserError) as caught:
        captioner_from_payload({"config": to_dict(cfg), "vocab": vocab, "model": lacking}, "cpu",
                               source="e.pt")  # fmt: skip
    assert str(caught.value).startswith(
        f"e.pt's weights do not fit its config: it lacks '{name}' (1 missing, 0 unexpected)"
    )
    other = {**weights, name: torch.zeros(shape[0] + 1)}
    with pytest.raises(UserError) as caught:
        captioner_from_payload({"config": to_dict(cfg), "vocab": vocab, "model": other}, "cpu",
                               source="e.pt")  # fmt: skip
    assert str(caught.value).startswith(
        f"e.pt's weights do not fit its config: '{name}' is ({shape[0] + 1},), its config needs "
        f"{shape}"
    )


@pytest.mark.parametrize("attention,cell", [(False, "lstm"), (True, "gru"), ("top_down", "lstm")])
def test_scheduled_sampling_reads_the_models_own_word_with_its_probability(attention, cell):
    """Scheduled sampling (Bengio et al. 2015), with two references per image: the words each step
    reads (seen by a hook on the embedding) are <start> first, then the model's own draw with
    probability p; with p = 1 and a model that only ever says word 11, forward equals teacher
    forcing on captions whose words are all 11, scored against the real targets; with p ~ 0 it is
    teacher forcing."""
    decoder = make_decoder(attention, cell)
    images = random_features()  # 3 images, 2 captions each
    captions, lengths = padded_captions()
    captions, lengths = captions.repeat_interleave(2, dim=0), lengths.repeat_interleave(2)
    read = []
    decoder.embedding.register_forward_hook(lambda module, args, out: read.append(args[0]))
    tf_logits, tf_loss = decoder(images, captions, lengths)
    logits, loss = decoder(images, captions, lengths, sampling_prob=1e-12)
    valid = torch.arange(captions.size(1) - 1)[None, :] < (lengths - 1)[:, None]  # real steps
    torch.testing.assert_close(logits[valid], tf_logits[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, tf_loss, atol=1e-5, rtol=1e-5)

    with torch.no_grad():  # every logit but word 11's so low that exp() gives exactly 0
        decoder.output.bias.fill_(-1e4)
        decoder.output.bias[11] = 0.0
    decoder.alpha_c = 0.0  # the loss is the cross-entropy alone (its regulariser is checked above)
    read.clear()
    logits, loss = decoder(images, captions, lengths, sampling_prob=1.0)
    assert torch.equal(read[0], captions[:, 0]) and all((words == 11).all() for words in read[1:])
    elevens = captions.clone()
    elevens[:, 1:] = 11
    reference, _ = decoder(images, elevens, lengths)
    torch.testing.assert_close(logits[valid], reference[valid], atol=1e-4, rtol=1e-5)
    expected = F.cross_entropy(reference[valid], captions[:, 1:][valid])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-3)

    many = captions.repeat(100, 1)  # 600 captions, 3 draws each
    read.clear()
    decoder(
        images.index_select(torch.arange(3).repeat(100)),
        many,
        lengths.repeat(100),
        sampling_prob=0.3,
        generator=torch.Generator().manual_seed(0),
    )
    own = torch.stack(read[1:], dim=1) == 11  # (600, 3); no reference holds word 11
    assert not (many == 11).any() and abs(own.float().mean().item() - 0.3) < 0.05
    with torch.no_grad():  # a uniform next word: the draws cover the vocabulary (not an argmax)
        decoder.output.bias.zero_(), decoder.output.weight.zero_()
    read.clear()
    decoder(images, captions, lengths, sampling_prob=1.0, generator=torch.Generator())
    assert torch.cat(read[1:]).unique().numel() > 3  # 18 draws from 13 words (argmax: 1)
    with torch.no_grad():  # weights gone NaN: a NaN loss for the engine's guard, not multinomial's
        decoder.output.bias[0] = math.nan  # RuntimeError (a device-side assert on CUDA)
    _, loss = decoder(images, captions, lengths, sampling_prob=1.0)
    assert loss.isnan()


@pytest.mark.parametrize("attention", [False, "top_down"])
def test_scheduled_sampling_draws_from_the_step_befores_distribution(attention):
    """With p = 1 each step reads a word drawn from what the step before predicted: with one-hot
    predictions forward is a greedy roll-out, equal to step() fed its own argmax at every step;
    with spread ones, the words of 4000 draws after <start> follow that step's softmax. The draws
    come from the generator given alone (the same seed gives the same words, and the global
    generator is left as it was), and with p = 0 nothing is drawn at all."""
    decoder = make_decoder(attention)
    features = random_features()
    captions, lengths = padded_captions()
    with torch.no_grad():  # logits in the hundreds: every draw is the argmax
        decoder.output.weight.mul_(1e3), decoder.output.bias.mul_(1e3)
    logits, _ = decoder(features, captions, lengths, sampling_prob=1.0)
    state, tokens = decoder.init_state(features), captions[:, 0]
    for t in range(captions.size(1) - 1):
        step_logits, state, _ = decoder.step(tokens, state, features)
        torch.testing.assert_close(logits[:, t], step_logits, atol=1e-3, rtol=1e-5)
        tokens = step_logits.argmax(dim=-1)

    decoder = make_decoder(attention, seed=1)
    with torch.no_grad():  # a top word of about 0.2
        decoder.output.weight.mul_(6.0), decoder.output.bias.mul_(6.0)
    one = random_features(batch=1)
    captions = torch.tensor([[START, 4, END]]).repeat(4000, 1)  # 4000 references of one image
    lengths = torch.full((4000,), 3)
    read = []
    decoder.embedding.register_forward_hook(lambda module, args, out: read.append(args[0]))
    global_state = torch.get_rng_state()
    draws = []
    for _ in range(2):
        read.clear()
        logits, _ = decoder(
            one, captions, lengths, sampling_prob=1.0, generator=torch.Generator().manual_seed(3)
        )
        draws.append(read[1])
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(torch.get_rng_state(), global_state)
    share = torch.bincount(draws[0], minlength=VOCAB) / 4000
    torch.testing.assert_close(share, logits[0, 0].softmax(dim=-1), atol=0.03, rtol=0)
    decoder(one, captions[:3], lengths[:3])  # sampling_prob 0: teacher forcing, no draw
    assert torch.equal(torch.get_rng_state(), global_state)


def test_tied_embeddings_share_the_matrix():
    tied = make_decoder(False, tied_embeddings=True)  # hidden 12 != embed 8: a projection
    assert tied.output.weight is tied.embedding.weight
    assert tied.out_proj.weight.shape == (8, 12)
    untied = make_decoder(False)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(untied) - count(tied) == VOCAB * 12 - 8 * 12  # shared matrix, plus projection
    same = make_decoder(False, tied_embeddings=True, embed_size=12)
    assert isinstance(same.out_proj, torch.nn.Identity)
    # a hidden state narrower than the embedding is projected up to it
    narrow = make_decoder(False, tied_embeddings=True, hidden_size=6)
    assert narrow.out_proj.weight.shape == (8, 6)
    captions, lengths = padded_captions()
    with torch.no_grad():
        logits, _ = narrow(random_features(), captions, lengths)
        outputs, _ = narrow.core(
            narrow.embedding(captions[:, :-1]), narrow.init_state(random_features())
        )
    torch.testing.assert_close(
        logits[0],
        outputs[0] @ narrow.out_proj.weight.T @ narrow.embedding.weight.T + narrow.output.bias,
    )


@pytest.mark.parametrize("attention", [False, True, "top_down"])
def test_overfits_a_few_pairs(attention):
    """A tiny model learns four (image, caption) pairs well enough for greedy decoding to recite
    each image's caption exactly (features of a frozen random encoder, computed once)."""
    torch.manual_seed(0)
    cfg = CaptionerConfig(
        model=tiny_model_cfg(
            attention=bool(attention),
            top_down=attention == "top_down",
            encoder_stages=1,
            embed_size=16,
            hidden_size=32,
        )
    )
    model = CaptionModel(cfg, VOCAB).eval()
    generator = torch.Generator().manual_seed(1)
    # Four noisy images of distinct colours: their pooled features differ clearly.
    colours = 2 * torch.randn(4, 3, 1, 1, generator=generator)
    images = colours + 0.5 * torch.randn(4, 3, 16, 16, generator=generator)
    captions = torch.tensor(
        [
            [START, 4, 5, 6, END, PAD],
            [START, 4, 7, END, PAD, PAD],
            [START, 8, 9, 10, 11, END],
            [START, 12, 5, END, PAD, PAD],
        ]
    )
    lengths = torch.tensor([5, 4, 6, 4])
    features = model.encode(images)  # frozen encoder: the same features at every step
    assert not features.grid.requires_grad
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=3e-2)
    model.train()
    for _ in range(50):  # both variants recite all four after 10-15 steps
        _, loss = model.decoder(features, captions, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    decoded = greedy_decode(model.decoder, features, max_length=8, start_id=START, end_id=END)
    for caption, ids, length in zip(decoded, captions, lengths.tolist(), strict=True):
        assert caption.tokens == ids[1 : length - 1].tolist()
        assert caption.finished
