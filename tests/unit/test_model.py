"""The whole model: dropped tokens, decoder, heads, precision, presets and the summary CLI."""

import json
import math

import pytest
import torch

from onepeace.config import model_config
from onepeace.model import OnePeace
from onepeace.model.accounting import forward_flops, parameter_groups, vision_branch_params
from onepeace.model.init import GEGLU_RMS_WIDTH_SCALED


@pytest.fixture
def model():
    return OnePeace(model_config("tiny")).eval()


def test_keep_everything_equals_no_dropping(model):
    text = torch.randint(3, 1000, (2, 7))
    image = torch.randn(2, 3, 64, 64)
    full = model.forward_encoder(text=text, image=image)
    kept = model.forward_encoder(text=text, image=image, text_keep=torch.arange(7).expand(2, -1),
                                 image_keep=torch.arange(16).expand(2, -1))
    for m in full:
        torch.testing.assert_close(kept[m].tokens, full[m].tokens, atol=1e-5, rtol=1e-5)


def test_dropping_equals_masking_keys_at_original_positions(model):
    """Dropped tokens are gone, and visible tokens keep their original relative positions: the same as
    attending over the full sequence with the dropped tokens as padded keys."""
    with torch.no_grad():
        model.rel_bias.tables["text"].normal_()
    text = torch.randint(3, 1000, (2, 9))
    keep = torch.tensor([[0, 3, 4, 8], [1, 2, 6, 7]])
    dropped = model.forward_encoder(text=text, text_keep=keep)["text"].tokens
    as_padding = torch.ones(2, 9, dtype=torch.bool)
    as_padding.scatter_(1, keep, False)
    full = model.forward_encoder(text=text, text_padding_mask=as_padding)["text"].tokens
    expected = torch.cat([full[:, :1], full[:, 1:].gather(1, keep[..., None].expand(-1, -1, 64))], dim=1)
    torch.testing.assert_close(dropped, expected, atol=1e-5, rtol=1e-5)


def test_padding_slots_in_keep_are_padding(model):
    text = torch.randint(3, 1000, (2, 6))
    out = model.forward_encoder(text=text, text_keep=torch.tensor([[0, 1, 2], [3, -1, -1]]))["text"]
    assert out.padding_mask.tolist() == [[False] * 4, [False, False, True, True]]
    assert out.masked_positions().tolist() == [[False, False, False, False, True, True, True],
                                               [False, True, True, True, False, True, True]]


def test_encode_api_returns_unit_vectors(model):
    emb = [model.encode_image(torch.randn(3, 3, 64, 64)), model.encode_text(torch.randint(3, 1000, (3, 5))),
           model.encode_audio(torch.randn(3, 8000))]
    for e in emb:
        assert e.shape == (3, 64)
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert model.logit_scale.item() == pytest.approx(2.659, abs=1e-3)  # ln(1 / 0.07)


def test_decoder_fills_masked_positions_with_mask_tokens(model):
    model.train()
    image = torch.randn(2, 3, 64, 64)
    keep = torch.tensor([[0, 5, 9, 15], [1, 2, 3, 4]])
    out = model.forward_encoder(image=image, image_keep=keep)
    preds = model.decode(out)
    assert preds["image"].shape == (2, 17, 64)
    masked = out["image"].masked_positions()
    assert masked.sum() == 2 * 12
    (preds["image"][masked]).sum().backward()
    assert model.decoder.mask_token["image"].grad.abs().sum() > 0
    assert model.adapters["image"].stem[0].weight.grad.abs().sum() > 0


def test_decoder_handles_a_padded_pair(model):
    text = torch.randint(3, 1000, (2, 6))
    text[0, 4:] = 0
    audio = torch.randn(2, 8000)
    out = model.forward_encoder(text=text, audio=audio, text_keep=torch.tensor([[0, 2, -1], [1, 3, 5]]),
                                audio_keep=torch.tensor([[0, 1, 7, 20], [3, 4, 5, 6]]))
    preds = model.decode(out)
    assert preds["text"].shape == (2, 7, 64) and preds["audio"].shape == (2, 25, 64)
    assert torch.isfinite(preds["text"]).all() and torch.isfinite(preds["audio"]).all()


def test_decoder_has_its_own_ends_per_modality(model):
    """Input projection, mask token, positions, final norm and output head are separate per modality, as in
    the official decoder (decoder_<m>_embed, <m>_mask_token, <m>_adapter positions, <m>_layer_norm,
    <m>_mask_head): changing the text ends leaves the audio predictions of a pair untouched."""
    names = {n for n, _ in model.decoder.named_parameters()}
    for m in ("text", "image", "audio"):
        assert {f"in_proj.{m}.weight", f"out_proj.{m}.weight", f"mask_token.{m}", f"pos_embed.{m}",
                f"blocks.final_norm.{m}.weight"} <= names
    assert model.decoder.in_proj["audio"].weight.shape == (64, 64)  # tiny: decoder_dim 64, embed_dim 64
    text, audio = torch.randint(3, 1000, (2, 6)), torch.randn(2, 8000)
    out = model.forward_encoder(text=text, audio=audio, audio_keep=torch.tensor([[0, 1, 7, 20], [3, 4, 5, 6]]))
    before = model.decode(out)
    with torch.no_grad():
        model.decoder.out_proj["text"].weight.add_(1.0)
    after = model.decode(out)
    torch.testing.assert_close(after["audio"], before["audio"])
    assert not torch.allclose(after["text"], before["text"])


def test_initialisation_follows_the_reference():
    model = OnePeace(model_config("tiny", init_scheme="reference", init_std=0.25))
    std = model.config.init_std
    for name, p in model.named_parameters():
        if name.endswith(("qkv.weight", "fc2.weight")) or (name.startswith("proj.") and name.endswith("weight")):
            assert p.abs().max() <= std * (1 + 1e-6) and p.std() > std / 4, name  # cut at one std
        if name.endswith(("token_embed.weight", "cls_token", "pos_embed")):
            assert p.abs().max() <= 0.02 + 1e-7 and p.std() > 0.005, name  # embeddings: the reference's 0.02
        if name.endswith(".bias") and "norm" not in name and ".pos_conv." not in name:
            assert (p == 0).all(), name
        if ".pos_conv." in name and name.endswith(".bias"):  # PyTorch's default, as the official model
            fan_in = model.adapters["audio"].pos_conv[0][0].weight[0].numel()
            assert 0 < p.abs().max() <= fan_in**-0.5, name
        if name.startswith("adapters.audio.feature_extractor.") and p.dim() == 3:  # He-normal (wav2vec 2.0)
            assert 0.7 < p.std() / math.sqrt(2 / p[0].numel()) < 1.3, name
        if name.startswith("rel_bias.tables"):
            assert (p == 0).all()
        if name.endswith("gamma1"):
            assert torch.allclose(p, torch.full_like(p, model.config.layer_scale_init))
        if "norm" in name and name.endswith(".weight"):  # every LayerNorm gain 1, Sub-LayerNorms included
            assert (p == 1).all(), name


def test_reference_init_outside_the_tiny_preset():
    for preset in ("base", "large", "onepeace-4b"):
        assert model_config(preset).init_scheme == "reference" and model_config(preset).init_std == 0.02
    small = OnePeace(model_config("tiny", init_scheme="reference", modalities=["text"]))
    assert small.encoder.layers[0].attn.qkv.weight.abs().max() <= 0.02 + 1e-7
    assert small.adapters["text"].pos_embed.abs().max() <= 0.02 + 1e-7


def test_tiny_uses_open_clips_width_scaled_init():
    """open_clip's per-matrix stds at width 64, depth 2 (its transformer's init_parameters); plain normal."""
    torch.manual_seed(0)
    model = OnePeace(model_config("tiny"))
    d, depth, decoder_depth = 64, 2, model.config.decoder_depth
    expect = {
        "encoder.layers.0.attn.qkv.weight": d**-0.5,
        "encoder.layers.1.attn.out_proj.weight": d**-0.5 * (2 * depth) ** -0.5,
        "encoder.layers.0.ffn.text.wi.weight": (2 * d) ** -0.5,
        "encoder.layers.1.ffn.image.fc2.weight": d**-0.5 * (2 * depth) ** -0.5,  # its width: the output's
        "proj.text.weight": d**-0.5,
        "decoder.blocks.layers.0.attn.out_proj.weight": model.config.decoder_dim**-0.5 * (2 * decoder_depth) ** -0.5,
        "adapters.text.token_embed.weight": 0.02,
        "adapters.text.pos_embed": 0.01,
        "adapters.image.pos_embed": 0.01,
    }
    params = {name: p.detach() for name, p in model.named_parameters()}
    for name, std in expect.items():
        p = params[name]
        assert abs(float(p.std()) / std - 1) < 0.15, (name, float(p.std()), std)
        assert p.abs().max() > 2 * std, name  # a normal's tails: not cut at one std


def test_width_scaled_ffn_sub_layernorm_starts_at_the_rms_of_its_input():
    """So the norm does not scale the FFN branch up at init (docs/learning.md): measured on the model's own
    forward of text and images, in every layer, against the constant the scheme derives."""
    torch.manual_seed(0)
    model = OnePeace(model_config("tiny", modalities=["text", "image"])).eval()
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(float(args[0].pow(2).mean().sqrt())))
             for name, m in model.encoder.named_modules() if ".ffn." in name and name.endswith(".inner_norm")]
    with torch.no_grad():
        model.encode_text(torch.randint(1, 1000, (8, 20)))
        model.encode_image(torch.randn(8, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert len(seen) == 4 and all(abs(rms / GEGLU_RMS_WIDTH_SCALED - 1) < 0.1 for rms in seen), seen
    gains = {name: p.detach() for name, p in model.named_parameters() if name.endswith("inner_norm.weight")}
    assert {name for name in gains if ".ffn." in name} and {name for name in gains if ".attn." in name}
    for name, gain in gains.items():
        assert (gain == (GEGLU_RMS_WIDTH_SCALED if ".ffn." in name else 1.0)).all(), name


def test_bf16_autocast_and_bf16_parameters():
    model = OnePeace(model_config("tiny")).train()
    inputs = dict(text=torch.randint(3, 1000, (2, 5)), image=torch.randn(2, 3, 64, 64),
                  image_keep=torch.tensor([[0, 3], [4, 5]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_encoder(**inputs)
        ref = model.forward_encoder(**{k: v for k, v in inputs.items()})
    (out["text"].tokens.float().sum() + out["image"].tokens.float().sum()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert ref["text"].tokens.dtype == torch.float32  # autocast runs the final LayerNorm in fp32
    model16 = OnePeace(model_config("tiny")).to(torch.bfloat16)
    out16 = model16.forward_encoder(text=inputs["text"], image=inputs["image"].bfloat16())
    out16["image"].tokens.float().sum().backward()
    assert out16["image"].tokens.dtype == torch.bfloat16
    assert torch.isfinite(model16.adapters["image"].pos_embed.grad.float()).all()


def test_bf16_is_close_to_fp32():
    model = OnePeace(model_config("tiny")).eval()
    text = torch.randint(3, 1000, (2, 5))
    ref = model.encode_text(text)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.encode_text(text)
    assert (low - ref).abs().max() < 0.05


def test_preset_parameter_counts():
    counts = {}
    for preset in ("base", "large", "onepeace-4b"):
        with torch.device("meta"):
            model = OnePeace(model_config(preset))
        counts[preset] = (sum(p.numel() for p in model.parameters()), vision_branch_params(model),
                          parameter_groups(model))
    total, vision, groups = counts["onepeace-4b"]
    assert 3.85e9 < total < 4.15e9, total  # "about 4.0B"
    assert 1.45e9 < vision < 1.55e9, vision  # "about 1.5B"
    d, f, L = 1536, 6144, 40
    assert groups["image FFNs"] == L * (2 * d * f + f * d + 2 * f + d)  # W0, W1, LN_ffn, fc2 (+bias)
    # qkv + out_proj weights, q/v/out biases, Sub-LN, the two pre-norms, two LayerScale vectors
    assert groups["shared attention"] == L * (4 * d * d + 3 * d + 2 * d + 2 * 2 * d + 2 * d)
    assert counts["base"][0] < counts["large"][0] < total


def test_forward_flops_scale_with_tokens():
    cfg = model_config("base")
    image, text, pair = (forward_flops(cfg, k) for k in ("image", "text", "image-text"))
    # 2 * params * tokens dominates: the encoder part of the pair is about image + text
    assert 0.9 < pair / (image + text) < 1.2
    n_layer_params = 12 * (4 * 768 * 768 + 3 * 768 * 3072)
    assert image == pytest.approx(2 * n_layer_params * 257, rel=0.15)


def test_summary_cli_json(capsys):
    from onepeace.summary import main

    assert main(["--preset", "onepeace-4b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 3.85e9 < data["total_params"] < 4.15e9 and 1.45e9 < data["vision_branch_params"] < 1.55e9
    assert set(data["forward_flops"]) == {"image", "text", "audio", "image-text", "audio-text"}
    assert data["tokens"]["image"] == 257 and data["tokens"]["text"] == 72 and data["tokens"]["image-text"] == 329
    assert main(["--preset", "nope"]) == 2 and "unknown preset 'nope'" in capsys.readouterr().err


def test_views_can_share_one_adapter_pass(model):
    """adapt() once, then several views: the same outputs and gradients as running the adapters per view."""
    model.train()
    text = torch.randint(3, 1000, (2, 6))
    audio = torch.randn(2, 6000)
    keep = torch.tensor([[0, 2, 5], [1, 3, 4]])

    def loss_of(outputs):
        return sum((o.tokens * torch.linspace(-1, 1, o.tokens.numel()).view_as(o.tokens)).sum()
                   for out in outputs for o in out.values())

    torch.manual_seed(3)
    model.zero_grad()
    separate = [model.forward_encoder(text=text, audio=audio), model.forward_encoder(text=text, text_keep=keep)]
    loss_of(separate).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.manual_seed(3)
    model.zero_grad()
    adapted = model.adapt(text=text, audio=audio)
    shared = [model.forward_encoder(adapted=adapted),
              model.forward_encoder(adapted={"text": adapted["text"]}, text_keep=keep)]
    loss_of(shared).backward()
    for a, b in zip(shared, separate):
        for m in a:
            torch.testing.assert_close(a[m].tokens, b[m].tokens)
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, msg=name)
    with pytest.raises(ValueError, match="raw inputs or adapted=, not both"):
        model.forward_encoder(text=text, adapted=adapted)
