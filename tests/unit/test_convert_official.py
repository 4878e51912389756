"""onepeace-convert-official on a synthetic checkpoint in the official layout, against a plain restatement of
the official forward (query - key bias indexing, separate q/k/v, GeGLU wi_0/wi_1)."""

from __future__ import annotations

import argparse
import json
import math
import string
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from data_fixtures import make_image_text, write_gpt2_bpe
from official_layout import MODS, OfficialSize, official_checkpoint

from onepeace.data.tokenizer import Tokenizer
from onepeace.eval.cli import main as eval_main
from onepeace.integrations.official import (
    ConversionError,
    convert_state,
    load_official,
    main,
    summarise,
)
from onepeace.model import OnePeace
from onepeace.runs import load_model, warm_start

SIZE = OfficialSize()
D, H, L, FFN, VOCAB, TEXT_BUCKETS, AUDIO_BUCKETS, GRID = (SIZE.d, SIZE.heads, SIZE.layers, SIZE.ffn, SIZE.vocab,
                                                          SIZE.text_buckets, SIZE.audio_buckets, SIZE.grid)
CONV, POS_CONVS, POS_KERNEL, POS_GROUPS = SIZE.conv, SIZE.pos_convs, SIZE.pos_kernel, SIZE.pos_groups
DEC_D, DEC_L, DEC_FFN = SIZE.dec_d, SIZE.dec_layers, SIZE.dec_ffn


def is_head_or_decoder(key: str) -> bool:
    return key.startswith(("decoder_wrapper.", "decoder_")) or key.endswith(("_mask_token", "logit_scale")) \
        or "_mask_head." in key or key.split(".")[0] in {f"{m}_proj" for m in MODS}


# ---------------------------------------------------------------------------------------------------------
# The official forward, restated (math path): bias[h, q, k] = table[rp_bucket[q, k], h], index query - key
# ---------------------------------------------------------------------------------------------------------


def official_text_buckets(bucket_size: int, n: int, max_position: int = 1024) -> torch.Tensor:
    pos = torch.arange(max_position)
    rel = pos[:, None] - pos[None, :]  # query - key
    mid = bucket_size // 2
    abs_pos = torch.where((rel < mid) & (rel > -mid), mid - 1, rel.abs())
    log_pos = mid + torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)).long()
    bucket = torch.where(abs_pos <= mid, rel, log_pos * torch.sign(rel)) + bucket_size - 1
    num = 2 * bucket_size - 1
    bucket[0, :], bucket[:, 0], bucket[0, 0] = num, num + 1, num + 2
    return bucket[:n, :n]


def official_image_buckets(grid: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + grid - 1  # query - key
    out = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.long)
    out[1:, 1:] = rel[..., 0] * (2 * grid - 1) + rel[..., 1]
    num = (2 * grid - 1) ** 2 + 3
    out[0, :], out[:, 0], out[0, 0] = num - 3, num - 2, num - 1
    return out


def _norm(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"])


def official_layer(x, sd, p, lengths, bias):
    B, T, _ = x.shape
    a = f"{p}self_attn."
    h = _norm(x, sd, f"{p}self_attn_layer_norm")
    q = F.linear(h, sd[f"{a}q_proj.weight"], sd[f"{a}q_proj.bias"]) * (D // H) ** -0.5
    k = F.linear(h, sd[f"{a}k_proj.weight"])
    v = F.linear(h, sd[f"{a}v_proj.weight"], sd[f"{a}v_proj.bias"])
    q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v
    attn = F.linear(_norm(attn.transpose(1, 2).reshape(B, T, D), sd, f"{a}ln"), sd[f"{a}out_proj.weight"],
                    sd[f"{a}out_proj.bias"])
    x = x + sd[f"{p}gamma_1"] * attn
    h, parts, start = _norm(x, sd, f"{p}final_layer_norm"), [], 0
    for m, n in lengths:
        f, part = f"{p}{m}_ffn.", h[:, start:start + n]
        g = F.gelu(F.linear(part, sd[f"{f}0.wi_0.weight"])) * F.linear(part, sd[f"{f}0.wi_1.weight"])
        parts.append(F.linear(_norm(g, sd, f"{f}2"), sd[f"{f}3.weight"], sd[f"{f}3.bias"]))
        start += n
    return x + sd[f"{p}gamma_2"] * torch.cat(parts, dim=1)


def official_audio_features(sd, waves):
    """wav2vec 2.0 feature extractor, then the convolutional position embedding (official module indices)."""
    a = "encoder_wrapper.audio_adapter."
    x = waves[:, None]
    for j, stride in enumerate((5, 2, 2, 2, 2, 2, 2)):
        x = F.conv1d(x, sd[f"{a}embed_audios.0.conv_layers.{j}.0.weight"], stride=stride)
        x = F.gelu(_norm(x.transpose(1, 2), sd, f"{a}embed_audios.0.conv_layers.{j}.2.1").transpose(1, 2))
    x = F.linear(_norm(x.transpose(1, 2), sd, f"{a}embed_audios.2"), sd[f"{a}embed_audios.3.weight"],
                 sd[f"{a}embed_audios.3.bias"])
    pos = x.transpose(1, 2)
    for j in range(1, POS_CONVS + 1):
        pos = F.conv1d(pos, sd[f"{a}embed_positions.{j}.0.weight"], sd[f"{a}embed_positions.{j}.0.bias"],
                       padding=POS_KERNEL // 2, groups=POS_GROUPS)
        pos = F.gelu(F.layer_norm(pos.transpose(1, 2), (D,)).transpose(1, 2))
    pos = torch.cat([sd[f"{a}cls_pos_embed"].expand(len(x), -1, -1), pos.transpose(1, 2)], 1)
    return torch.cat([sd[f"{a}cls_embedding"].expand(len(x), -1, -1), x], 1) + pos


def official_forward(sd, tokens=None, images=None, waves=None):
    """{modality: final hidden states [B, 1 + n, D]} of the official encoder for one modality or a pair."""
    e, xs, tables, lengths = "encoder_wrapper.", [], [], []
    if tokens is not None:
        t = f"{e}text_adapter."
        x = torch.cat([sd[f"{t}cls_embedding"].expand(len(tokens), -1, -1), sd[f"{t}embed_tokens.weight"][tokens]], 1)
        xs.append(x + sd[f"{t}embed_positions.weight"][: x.shape[1]])
        table = sd[f"{t}rel_pos_table_list.0.weight"]
        tables.append(table[official_text_buckets(TEXT_BUCKETS, x.shape[1])])
        lengths.append(("text", x.shape[1]))
    if images is not None:
        i = f"{e}image_adapter.embed_images."
        y = F.conv2d(images, sd[f"{i}0.weight"], sd[f"{i}0.bias"], stride=4)
        y = F.gelu(_norm(y.permute(0, 2, 3, 1), sd, f"{i}1.layer_norm").permute(0, 3, 1, 2))
        y = F.conv2d(y, sd[f"{i}3.weight"], sd[f"{i}3.bias"], stride=2)
        y = F.gelu(_norm(y.permute(0, 2, 3, 1), sd, f"{i}4.layer_norm").permute(0, 3, 1, 2))
        y = F.conv2d(y, sd[f"{i}6.weight"], sd[f"{i}6.bias"], stride=2).flatten(2).transpose(1, 2)
        y = torch.cat([sd[f"{e}image_adapter.cls_embedding"].expand(len(images), -1, -1), y], 1)
        xs.append(y + sd[f"{e}image_adapter.pos_embed"])
        tables.append(sd[f"{e}image_adapter.rel_pos_table_list.0.weight"][official_image_buckets(GRID)])
        lengths.append(("image", y.shape[1]))
    if waves is not None:
        xs.append(official_audio_features(sd, waves))
        table = sd[f"{e}audio_adapter.rel_pos_table_list.0.weight"]
        tables.append(table[official_text_buckets(AUDIO_BUCKETS, xs[-1].shape[1])])
        lengths.append(("audio", xs[-1].shape[1]))
    x = torch.cat(xs, dim=1)
    bias, start = torch.zeros(H, x.shape[1], x.shape[1]), 0
    for table, (_, n) in zip(tables, lengths):
        bias[:, start:start + n, start:start + n] = table.permute(2, 0, 1)  # cross-modal blocks stay 0
        start += n
    for n in range(L):
        x = official_layer(x, sd, f"{e}fusion_model.layers.{n}.", lengths, bias)
    out, start = {}, 0
    for m, n in lengths:
        out[m] = _norm(x[:, start:start + n], sd, f"{e}fusion_model.{m}_layer_norm")
        start += n
    return out


# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official():
    return official_checkpoint()


@pytest.fixture(scope="module")
def converted(official):
    return convert_state(official)


def test_infers_the_size_and_uses_every_weight(converted):
    c = converted.model.config
    assert (c.embed_dim, c.depth, c.num_heads, c.ffn_dim, c.vocab_size, c.pad_id, c.image_size) == \
        (D, L, H, FFN, VOCAB, 1, 16 * GRID)
    assert (c.text_rel_buckets, c.audio_rel_buckets, c.rel_max_distance, c.share_rel_bias) == \
        (TEXT_BUCKETS, AUDIO_BUCKETS, 1024, True)
    assert (c.audio_conv_dim, c.audio_pos_conv_layers, c.audio_pos_conv_kernel, c.audio_pos_conv_groups) == \
        (CONV, POS_CONVS, POS_KERNEL, POS_GROUPS)
    assert (c.decoder_dim, c.decoder_depth, c.decoder_heads, c.decoder_ffn_dim) == (DEC_D, DEC_L, 2, DEC_FFN)
    assert converted.fresh == []
    assert "encoder_wrapper.audio_adapter.mask_embedding" in converted.ignored
    assert "encoder_wrapper.text_adapter.rp_bucket" in converted.ignored


def test_outputs_equal_the_official_forward(official, converted):
    model = converted.model.eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, VOCAB, (2, 12), generator=g)  # 13 positions with CLS: log buckets beyond +-4
    images = torch.randn(2, 3, 16 * GRID, 16 * GRID, generator=g)
    with torch.no_grad():
        pair = model.forward_encoder(text=tokens, image=images)
        ref = official_forward(official, tokens, images)
        for m in ("text", "image"):
            torch.testing.assert_close(pair[m].tokens, ref[m], rtol=1e-4, atol=1e-4)
        text_ref_full = official_forward(official, tokens=tokens)["text"]
        text_ref = text_ref_full[:, 0]
        expected = F.normalize(F.linear(text_ref, official["text_proj.weight"], official["text_proj.bias"]), dim=-1)
        torch.testing.assert_close(model.encode_text(tokens), expected, rtol=1e-4, atol=1e-4)
        waves = torch.randn(2, 4000, generator=g)  # 12 frames
        audio_pair = model.forward_encoder(text=tokens, audio=waves)
        audio_ref = official_forward(official, tokens, waves=waves)
        for m in ("text", "audio"):
            torch.testing.assert_close(audio_pair[m].tokens, audio_ref[m], rtol=1e-4, atol=1e-4)
    # The comparison sees the bias orientation: the official rows loaded unreversed give other outputs.
    raw = official["encoder_wrapper.text_adapter.rel_pos_table_list.0.weight"]
    with torch.no_grad():
        model.rel_bias.tables["text"].copy_(raw)
        try:
            assert not torch.allclose(model.forward_encoder(text=tokens)["text"].tokens, text_ref_full, atol=1e-3)
        finally:
            model.rel_bias.tables["text"].copy_(torch.cat([raw[:-3].flip(0), raw[-3:]]))


def test_audio_weights_land_in_our_modules(official, converted):
    sd, a = converted.model.state_dict(), "encoder_wrapper.audio_adapter."
    for j in range(7):
        assert torch.equal(sd[f"adapters.audio.feature_extractor.{3 * j}.weight"],
                           official[f"{a}embed_audios.0.conv_layers.{j}.0.weight"])
        assert torch.equal(sd[f"adapters.audio.feature_extractor.{3 * j + 1}.norm.bias"],
                           official[f"{a}embed_audios.0.conv_layers.{j}.2.1.bias"])
    assert torch.equal(sd["adapters.audio.pos_conv.1.0.weight"], official[f"{a}embed_positions.2.0.weight"])
    assert torch.equal(sd["adapters.audio.feature_proj.weight"], official[f"{a}embed_audios.3.weight"])
    table = official[f"{a}rel_pos_table_list.0.weight"]
    assert torch.equal(sd["rel_bias.tables.audio"][: 2 * AUDIO_BUCKETS - 1], table[: 2 * AUDIO_BUCKETS - 1].flip(0))
    assert torch.equal(sd["decoder.pos_embed.audio"][0], official["decoder_wrapper.audio_adapter.embed_positions.weight"][:751])
    assert torch.equal(sd["decoder.mask_token.image"].flatten(), official["image_mask_token"].flatten())
    assert torch.equal(sd["decoder.out_proj.audio.weight"], official["audio_mask_head.weight"])
    assert torch.equal(sd["logit_scale"], official["logit_scale"].reshape(1))


def test_export_round_trip_eval_and_warm_start(official, converted, tmp_path, capsys):
    path = tmp_path / "one-peace.pt"
    torch.save({"model": official, "args": argparse.Namespace(arch="one_peace"), "cfg": {"task": {"bpe": "gpt2"}}},
               path)
    # A dictionary of VOCAB - 4 symbols (the checkpoint has VOCAB text embeddings): " " and the letters a-z.
    encoder, lines = write_gpt2_bpe(str(tmp_path / "bpe"), [("Ġ", "a")],
                                    in_dict=lambda i, token: token in ("Ġ", "Ġa", *string.ascii_lowercase))
    assert len(lines) <= VOCAB - 4
    out = tmp_path / "export"
    assert main([str(path), str(out), "--bpe-dir", str(tmp_path / "bpe")]) == 0
    assert "2 layers, width 32, 4 heads" in capsys.readouterr().out
    loaded = OnePeace.from_pretrained(str(out))
    reference = converted.model.state_dict()
    assert loaded.state_dict().keys() == reference.keys()
    assert all(torch.equal(loaded.state_dict()[k], reference[k]) for k in reference)

    tokenizer = Tokenizer(load_model(str(out)).tokenizer)  # the tokenizer onepeace-eval finds in the export
    model_id = {line.split()[0]: 4 + n for n, line in enumerate(lines)}
    assert tokenizer.encode("A b").tolist() == [model_id[str(encoder["Ġa"])], model_id[str(encoder["Ġ"])],
                                                 model_id[str(encoder["b"])], 2]
    shards = make_image_text(str(tmp_path / "data"), 4, per_shard=2, labels=False)
    assert eval_main([str(out), "--data", shards, "--batch-size", "2", "--num-workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 4

    fresh = OnePeace(loaded.config)  # train.init_from= with a recipe of the same model settings
    report = warm_start(fresh, str(out))
    assert report["loaded"] == len(reference) and report["unused"] == 0


def test_encoder_only_checkpoint_gets_fresh_heads_and_decoder(official, converted, capsys, tmp_path):
    encoder_only = {k: v for k, v in official.items() if not is_head_or_decoder(k)}
    result = convert_state(encoder_only)
    assert summarise(result.fresh, result.model) == ["decoder", "proj.text", "proj.image", "proj.audio", "logit_scale"]
    full = converted.model.state_dict()
    for k, v in result.model.state_dict().items():
        if k.startswith(("encoder.", "adapters.")):
            assert torch.equal(v, full[k]), k
    assert result.model.state_dict()["logit_scale"].item() == pytest.approx(math.log(1 / 0.07))
    torch.save({"model": encoder_only}, tmp_path / "enc.pt")
    assert main([str(tmp_path / "enc.pt"), str(tmp_path / "out")]) == 0
    assert "freshly initialised (not in the checkpoint): decoder, proj.text" in capsys.readouterr().out


def test_unknown_and_missing_keys_are_refused_by_name(official, tmp_path, capsys):
    extra = dict(official)
    extra["encoder_wrapper.fusion_model.layers.0.self_attn.c_attn"] = torch.ones(H)
    with pytest.raises(ConversionError, match=r"no place in this model: encoder_wrapper\.fusion_model\.layers\.0\."
                                              r"self_attn\.c_attn"):
        convert_state(extra)
    lacking = {k: v for k, v in official.items() if k != "encoder_wrapper.fusion_model.layers.1.image_ffn.2.bias"}
    with pytest.raises(ConversionError, match=r"lacks 1 key\(s\).*layers\.1\.image_ffn\.2\.bias"):
        convert_state(lacking)
    torch.save({"model": extra}, tmp_path / "bad.pt")
    assert main([str(tmp_path / "bad.pt"), str(tmp_path / "out")]) == 2
    assert "self_attn.c_attn" in capsys.readouterr().err


def test_reads_fairseq_objects_as_placeholders_and_refuses_others(tmp_path, monkeypatch):
    def fake_class(module: str, name: str) -> type:
        parts = module.split(".")
        for n in range(1, len(parts) + 1):  # the package and its parents, so that pickle can import it
            monkeypatch.setitem(sys.modules, ".".join(parts[:n]), types.ModuleType(".".join(parts[:n])))
        cls = type(name, (), {})
        cls.__module__ = module
        setattr(sys.modules[module], name, cls)
        return cls

    meter = fake_class("fairseq.logging.meters", "AverageMeter")()
    meter.val = 3.0
    torch.save({"model": {"w": torch.ones(2)}, "extra_state": {"metrics": {"loss": meter}}}, tmp_path / "f.pt")
    evil = fake_class("some_package", "Payload")()
    torch.save({"model": {"w": torch.ones(2)}, "x": evil}, tmp_path / "e.pt")
    for module in ("fairseq.logging.meters", "fairseq.logging", "fairseq", "some_package"):
        monkeypatch.delitem(sys.modules, module)
    state, placeholders = load_official(str(tmp_path / "f.pt"))
    assert list(state) == ["w"] and placeholders == ["fairseq.logging.meters.AverageMeter"]
    with pytest.raises(ConversionError, match="cannot be read safely"):
        load_official(str(tmp_path / "e.pt"))


def test_one_table_per_layer_gives_unshared_reversed_tables(official):
    per_layer = dict(official)
    for m in MODS:
        key = f"encoder_wrapper.{m}_adapter.rel_pos_table_list."
        per_layer[f"{key}1.weight"] = per_layer[f"{key}0.weight"] + 1.0  # layer 1 differs from layer 0
    model = convert_state(per_layer).model
    assert not model.config.share_rel_bias
    for m in MODS:
        ours = model.rel_bias.tables[m].detach()
        assert ours.shape[0] == L
        for n in range(L):
            theirs = per_layer[f"encoder_wrapper.{m}_adapter.rel_pos_table_list.{n}.weight"]
            assert torch.equal(ours[n], torch.cat([theirs[:-3].flip(0), theirs[-3:]]))
