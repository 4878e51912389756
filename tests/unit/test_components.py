"""Numerics of each building block against a plain re-statement of its definition."""

import math

import pytest
import torch
import torch.nn.functional as F

from onepeace.config import model_config
from onepeace.model import OnePeace
from onepeace.model.attention import SelfAttention
from onepeace.model.encoder import FusionLayer, GeGLU
from onepeace.ops.attention import padding_only
from onepeace.ops.fused import residual_update


def test_residual_update_matches_definition_without_drop_path():
    x, y, gamma = torch.randn(4, 5, 8), torch.randn(4, 5, 8), torch.randn(8)
    torch.testing.assert_close(residual_update(x, y, gamma), x + gamma * y)
    torch.testing.assert_close(residual_update(x, y, None), x + y)
    # eval mode ignores drop path and dropout
    torch.testing.assert_close(residual_update(x, y, gamma, drop_path=0.9, dropout=0.5, training=False), x + gamma * y)


def test_drop_path_drops_whole_samples():
    torch.manual_seed(3)
    x, y, gamma = torch.zeros(256, 6, 4), torch.ones(256, 6, 4), torch.full((4,), 0.5)
    out = residual_update(x, y, gamma, drop_path=0.25, training=True)
    per_sample = out.reshape(256, -1)
    dropped = (per_sample == 0).all(1)
    kept = (per_sample == 0.5 / 0.75).all(1)
    assert bool((dropped | kept).all()), "each sample is either dropped entirely or kept entirely"
    assert 30 < int(dropped.sum()) < 100  # about a quarter of 256


def test_geglu_matches_definition():
    ffn = GeGLU(8, 16)
    torch.nn.init.normal_(ffn.inner_norm.weight)
    h = torch.randn(2, 3, 8)
    w0, w1 = ffn.wi.weight[:16], ffn.wi.weight[16:]
    inner = F.gelu(h @ w0.T) * (h @ w1.T)
    expected = F.layer_norm(inner, (16,), ffn.inner_norm.weight, ffn.inner_norm.bias) @ ffn.fc2.weight.T + ffn.fc2.bias
    torch.testing.assert_close(ffn(h), expected)


def test_self_attention_matches_definition():
    attn = SelfAttention(16, 4)
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
        attn.inner_norm.weight.normal_()
    x = torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    q = x @ attn.qkv.weight[:16].T + attn.q_bias
    k = x @ attn.qkv.weight[16:32].T  # no k bias
    v = x @ attn.qkv.weight[32:].T + attn.v_bias
    split = lambda t: t.view(2, 5, 4, 4).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(4)
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    o = (torch.softmax(scores, -1) @ split(v)).transpose(1, 2).reshape(2, 5, 16)
    expected = attn.out_proj(F.layer_norm(o, (16,), attn.inner_norm.weight, attn.inner_norm.bias))
    for backend in ("math", "sdpa"):
        torch.testing.assert_close(attn(x, padding_only(pad, 2, 5), backend), expected, atol=1e-5, rtol=1e-5)


def test_fusion_layer_formula_and_routing_by_slicing():
    layer = FusionLayer(16, 4, 32, ["text", "image", "audio"], layer_scale_init=0.3).eval()
    x = torch.randn(2, 7, 16)
    bias = padding_only(None, 2, 7)
    segments = [("text", 3), ("image", 4)]
    h = x + layer.gamma1 * layer.attn(layer.attn_norm(x), bias, "math")
    z = layer.ffn_norm(h)
    ffn_out = torch.cat([layer.ffn["text"](z[:, :3]), layer.ffn["image"](z[:, 3:])], dim=1)
    expected = h + layer.gamma2 * ffn_out
    torch.testing.assert_close(layer(x, segments, bias, "math"), expected)
    # a different route gives a different result: the audio FFN is not the image FFN
    assert not torch.allclose(layer(x, [("text", 3), ("audio", 4)], bias, "math"), expected)


def test_activation_checkpointing_gives_same_gradients():
    cfg = model_config("tiny", drop_path_rate=0.3)  # randomness inside layers must replay exactly
    model = OnePeace(cfg).train()
    text = torch.randint(3, 1000, (4, 8))
    image = torch.randn(4, 3, 64, 64)

    def grads(checkpointing):
        model.set_activation_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(11)
        out = model.forward_encoder(text=text, image=image)
        loss = sum((o.tokens * torch.arange(o.tokens.numel()).view_as(o.tokens).sin()).sum() for o in out.values())
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert set(plain) == set(ckpt)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], msg=name)


def test_unshare_rel_bias_leaves_outputs_unchanged():
    model = OnePeace(model_config("tiny")).eval()
    with torch.no_grad():
        for t in model.rel_bias.tables.values():
            t.normal_()
    inputs = dict(text=torch.randint(3, 1000, (2, 6)), image=torch.randn(2, 3, 64, 64))
    before = model.forward_encoder(**inputs)
    model.unshare_rel_bias()
    assert model.rel_bias.tables["text"].shape[0] == model.config.depth
    after = model.forward_encoder(**inputs)
    for m in before:
        torch.testing.assert_close(after[m].tokens, before[m].tokens)
    # afterwards the layers' tables are independent parameters
    with torch.no_grad():
        model.rel_bias.tables["text"][1].add_(1.0)
    changed = model.forward_encoder(**inputs)
    assert not torch.allclose(changed["text"].tokens, before["text"].tokens)


def test_the_model_never_changes_the_config_it_was_given():
    config = model_config("tiny")
    model = OnePeace(config)
    model.unshare_rel_bias()
    model.resize_image(96)
    model.set_activation_checkpointing(True)
    assert config == model_config("tiny")
    assert (model.config.share_rel_bias, model.config.image_size, model.config.checkpoint_activations) == (
        False, 96, True)
    other = OnePeace(config)  # a second model from the same config is the configured one
    assert other.rel_bias.shared and other.adapters["image"].image_size == 64


def test_every_parameter_is_initialised_by_its_module():
    model = OnePeace(model_config("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.reset_parameters()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_partial_reset_gives_what_a_fresh_model_gets_and_keeps_the_rest():
    """reset_parameters(only=...) (used by train.reset) re-draws just the named parameters with the fresh
    model's rules, including parameters held in ParameterDicts and conv weights."""
    torch.manual_seed(0)
    model = OnePeace(model_config("tiny"))
    fresh = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = {"logit_scale", "encoder.layers.0.gamma1", "rel_bias.tables.text", "decoder.mask_token.text",
             "adapters.audio.feature_extractor.0.weight", "encoder.layers.1.attn.qkv.weight",
             "encoder.layers.1.attn.out_proj.bias", "encoder.final_norm.text.weight"}
    model.reset_parameters(only=names)
    for name, p in model.named_parameters():
        if name not in names:
            assert torch.equal(p, before[name]), name
    p = dict(model.named_parameters())
    for exact in ("logit_scale", "encoder.layers.0.gamma1", "rel_bias.tables.text",
                  "encoder.layers.1.attn.out_proj.bias", "encoder.final_norm.text.weight"):
        assert torch.equal(p[exact], fresh[exact]), exact
    mask_token, qkv = p["decoder.mask_token.text"], p["encoder.layers.1.attn.qkv.weight"]
    assert mask_token.abs().max() <= 0.02 and mask_token.std() > 0.005  # truncated normal, cut at one std
    assert 0.85 < qkv.std() / 64**-0.5 < 1.15  # the tiny preset's width-scaled init: normal, std 64^-0.5
    for drawn in ("decoder.mask_token.text", "encoder.layers.1.attn.qkv.weight"):
        assert not torch.equal(p[drawn], before[drawn]), drawn
    conv = p["adapters.audio.feature_extractor.0.weight"]
    assert 0.8 < conv.std() / math.sqrt(2 / 10) < 1.2  # He-normal over the first conv's fan-in (1 x 10)
    assert not torch.equal(conv, before["adapters.audio.feature_extractor.0.weight"])
    with pytest.raises(ValueError, match="no parameters named"):
        model.reset_parameters(only={"nope"})
