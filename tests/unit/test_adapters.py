"""Adapter shapes, strides, patch independence, padding invariance, and errors on bad input."""

import pytest
import torch

from onepeace.config import model_config
from onepeace.model import OnePeace, audio_frame_count
from onepeace.model.adapters import AudioAdapter, TextAdapter, VisionAdapter


@pytest.fixture
def cfg():
    return model_config("tiny")


def test_vision_adapter_shapes_and_stride(cfg):
    adapter = VisionAdapter(cfg)
    out = adapter(torch.randn(2, 3, 64, 64))
    assert out.tokens.shape == (2, 1 + 16, 64) and out.padding_mask is None
    strides = [m.stride for m in adapter.stem if isinstance(m, torch.nn.Conv2d)]
    kernels = [m.kernel_size for m in adapter.stem if isinstance(m, torch.nn.Conv2d)]
    assert strides == kernels == [(4, 4), (2, 2), (2, 2)]


def test_hmlp_stem_patches_are_independent(cfg):
    adapter = VisionAdapter(cfg).eval()
    images = torch.randn(1, 3, 64, 64)
    changed = images.clone()
    changed[:, :, 16:32, 32:48] = torch.randn(1, 3, 16, 16)  # the patch at row 1, column 2
    a, b = adapter(images).tokens[0, 1:], adapter(changed).tokens[0, 1:]
    differs = (a - b).abs().amax(-1) > 0
    assert differs.tolist() == [i == 1 * 4 + 2 for i in range(16)]


def test_vision_resize_interpolates_positions(cfg):
    model = OnePeace(cfg)
    model.resize_image(96)
    assert model.adapters["image"].pos_embed.shape == (1, 37, 64)
    assert model.rel_bias.tables["image"].shape[0] == 11 * 11 + 3
    out = model.forward_encoder(image=torch.randn(1, 3, 96, 96), image_keep=torch.tensor([[0, 35]]))
    assert out["image"].tokens.shape == (1, 3, 64)


def test_audio_frame_count_matches_conv_stack(cfg):
    adapter = AudioAdapter(cfg)
    for n in (400, 719, 720, 16000, 23456):
        frames = adapter.feature_extractor(torch.zeros(1, 1, n)).shape[-1]
        assert audio_frame_count(n) == frames
    assert audio_frame_count(16000) == 49 and audio_frame_count(399) == 0
    assert audio_frame_count(torch.tensor([400, 16000])).tolist() == [1, 49]


def test_audio_adapter_shapes_and_padding_invariance(cfg):
    adapter = AudioAdapter(cfg).eval()
    short, long = torch.randn(8000), torch.randn(16000)
    batch = torch.zeros(2, 16000)
    batch[0, :8000], batch[1] = short, long
    pad = torch.zeros(2, 16000, dtype=torch.bool)
    pad[0, 8000:] = True
    out = adapter(batch, pad)
    assert out.tokens.shape == (2, 1 + 49, 64)
    assert out.padding_mask[0].sum() == 49 - audio_frame_count(8000) and not out.padding_mask[1].any()
    alone = adapter(short[None]).tokens[0]
    n = audio_frame_count(8000) + 1
    # padding never leaks into real frames (zeroed before the conv position embedding)
    torch.testing.assert_close(out.tokens[0, :n], alone, atol=1e-5, rtol=1e-5)


def test_text_adapter_padding_invariance_through_the_model(cfg):
    model = OnePeace(cfg).eval()
    a = torch.tensor([[5, 6, 7, 2]])
    batch = torch.tensor([[5, 6, 7, 2, 0, 0], [9, 8, 7, 6, 5, 2]])
    alone = model.encode_text(a)
    together = model.encode_text(batch)
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)
    out = TextAdapter(cfg)(batch)
    assert out.tokens.shape == (2, 7, 64) and out.padding_mask[0].tolist() == [False] * 5 + [True] * 2


@pytest.mark.parametrize("call, message", [
    (lambda m: m.forward_encoder(image=torch.randn(2, 64, 64)), r"images must be a float tensor \[B, 3, H, W\]"),
    (lambda m: m.forward_encoder(image=torch.randn(2, 3, 32, 32)), r"images must be 64x64.*resize_image"),
    (lambda m: m.forward_encoder(image=torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), "floating point"),
    (lambda m: m.forward_encoder(text=torch.randn(2, 5)), "integer tensor"),
    (lambda m: m.forward_encoder(text=torch.ones(2, 80, dtype=torch.long)), r"80 tokens.*max_text_tokens = 71"),
    (lambda m: m.forward_encoder(text=torch.full((1, 4), 5000)), r"token ids must be in \[0, 1000\)"),
    (lambda m: m.forward_encoder(audio=torch.randn(2, 300)), "shorter than the conv stack's receptive field"),
    (lambda m: m.forward_encoder(audio=torch.randn(1, 16000 * 6)), r"more than the position tables hold"),
    (lambda m: m.forward_encoder(audio=torch.randn(2, 16000, 2)), r"audio must be a float tensor \[B, num_samples\]"),
    (lambda m: m.forward_encoder(audio=torch.randn(2, 4000),
                                 audio_padding_mask=torch.zeros(2, 4000)), "bool tensor"),
    (lambda m: m.forward_encoder(image=torch.randn(1, 3, 64, 64), audio=torch.randn(1, 4000)), "pair"),
    (lambda m: m.forward_encoder(), "at least one of"),
    (lambda m: m.forward_encoder(text=torch.ones(2, 4, dtype=torch.long), image=torch.randn(3, 3, 64, 64)),
     "same batch size"),
    (lambda m: m.forward_encoder(image=torch.randn(1, 3, 64, 64), image_keep=torch.tensor([[0, 16]])),
     r"image_keep indices must be in \[0, 16\)"),
    (lambda m: m.forward_encoder(image=torch.randn(1, 3, 64, 64), image_keep=torch.tensor([[-2]])),
     r"image_keep indices must be in"),
    (lambda m: m.forward_encoder(image=torch.randn(1, 3, 64, 64), image_keep=torch.tensor([0, 1])),
     r"image_keep must be an integer tensor \[B, k\]"),
    (lambda m: m.forward_encoder(text=torch.ones(1, 3, dtype=torch.long), image_keep=torch.tensor([[0]])),
     "image_keep was given without image"),
])
def test_bad_input_is_a_value_error_that_says_what_was_expected(cfg, call, message):
    model = OnePeace(cfg)
    with pytest.raises(ValueError, match=message):
        call(model)


def test_missing_branch_is_named():
    model = OnePeace(model_config("tiny", modalities=["text", "audio"]))
    with pytest.raises(ValueError, match=r"no image branch \(model.modalities = \['text', 'audio'\]\)"):
        model.forward_encoder(image=torch.randn(1, 3, 64, 64))


def test_masked_audio_view_does_not_see_masked_frames(cfg):
    """The conv position embedding runs after masked frames are dropped, so nothing of a masked frame
    reaches the visible ones: changing the masked frames' conv features, or the waveform where only masked
    frames' receptive fields lie, leaves a masked view's encoder output unchanged."""
    model = OnePeace(cfg).eval()
    audio = torch.randn(2, 8000)  # 24 frames; frame f reads samples [320 f, 320 f + 400)
    keep = torch.tensor([[0, 1, 2, 3], [0, 2, 4, 6]])
    masked_frames = torch.ones(2, 24, dtype=torch.bool)
    masked_frames.scatter_(1, keep, False)
    adapted = model.adapt(audio=audio)
    before = model.forward_encoder(adapted=adapted, audio_keep=keep)["audio"].tokens
    tokens = adapted["audio"].tokens.clone()
    tokens[:, 1:][masked_frames] += 5 * torch.randn(int(masked_frames.sum()), tokens.shape[-1])
    perturbed = adapted["audio"]._replace(tokens=tokens)
    after = model.forward_encoder(adapted={"audio": perturbed}, audio_keep=keep)["audio"].tokens
    torch.testing.assert_close(after, before)
    # end to end from the waveform: sample 0 keeps frames 0-3, which read samples [0, 1360)
    changed = audio.clone()
    changed[0, 1360:] = torch.randn(8000 - 1360)
    view = model.forward_encoder(audio=changed, audio_keep=keep)["audio"].tokens
    torch.testing.assert_close(view[0], before[0])
    # the unmasked forward (the denoising target) still runs its positions over all frames
    full, full_changed = (model.forward_encoder(audio=a)["audio"].tokens for a in (audio, changed))
    assert not torch.allclose(full_changed[0, 1:5], full[0, 1:5])


def test_audio_positions_over_all_frames_without_keep(cfg):
    """No keep: the same output as the adapter's own forward (positions over every frame), and keeping every
    frame equals keeping nothing out."""
    model = OnePeace(cfg).eval()
    audio = torch.randn(2, 6000)
    adapter = model.adapters["audio"]
    expected = model.forward_encoder(adapted={"audio": adapter(audio)})["audio"].tokens
    full = model.forward_encoder(audio=audio)["audio"].tokens
    torch.testing.assert_close(full, expected)
    features = adapter.features(audio)
    by_hand = features.tokens[:, 1:] + adapter.conv_positions(features.tokens[:, 1:], None)
    torch.testing.assert_close(adapter(audio).tokens[:, 1:], by_hand)
    n = audio_frame_count(6000)
    kept_all = model.forward_encoder(audio=audio, audio_keep=torch.arange(n).expand(2, -1))["audio"].tokens
    torch.testing.assert_close(kept_all, full, atol=1e-5, rtol=1e-5)


def test_masked_audio_view_is_padding_invariant(cfg):
    """A padded clip in a batch, with padding slots in its keep, gives the same view as the clip alone."""
    model = OnePeace(cfg).eval()
    short = torch.randn(4000)
    batch = torch.randn(2, 8000)
    batch[0, 4000:] = 0.0
    pad = torch.zeros(2, 8000, dtype=torch.bool)
    pad[0, 4000:] = True
    keep = torch.tensor([[0, 3, 4, 9, -1, -1], [1, 2, 3, 10, 11, 20]])
    batch[0, :4000] = short
    together = model.forward_encoder(audio=batch, audio_padding_mask=pad, audio_keep=keep)["audio"]
    alone = model.forward_encoder(audio=short[None], audio_keep=keep[:1, :4])["audio"]
    torch.testing.assert_close(together.tokens[0, :5], alone.tokens[0], atol=1e-5, rtol=1e-5)
    assert together.padding_mask[0].tolist() == [False] * 5 + [True] * 2
