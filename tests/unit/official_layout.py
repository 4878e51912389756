"""A synthetic checkpoint in the official ONE-PEACE layout (OnePeacePretrainModel's state dict: an
``encoder_wrapper`` and a ``decoder_wrapper`` ModelWrapper, heads, mask tokens, logit scale), with names and
shapes written down from the official module names and random values."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODS = ("text", "image", "audio")


@dataclass(frozen=True)
class OfficialSize:
    """Defaults: width 32, 4 heads, 2 layers, GeGLU 64, text bucket size 8, a 2x2 image grid (32 px),
    an 8-channel audio stack with 2 position convs (kernel 5, 4 groups), a 16-wide decoder."""

    d: int = 32
    heads: int = 4
    layers: int = 2
    ffn: int = 64
    vocab: int = 40
    text_buckets: int = 8
    audio_buckets: int = 8
    grid: int = 2
    conv: int = 8
    pos_convs: int = 2
    pos_kernel: int = 5
    pos_groups: int = 4
    dec_d: int = 16
    dec_layers: int = 2
    dec_ffn: int = 24


def _ln(shapes: dict, name: str, n: int) -> None:
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n,), (n,)


def _layer(shapes: dict, p: str, d: int, ffn: int, gammas: bool) -> None:
    a = f"{p}self_attn."
    shapes.update({f"{a}k_proj.weight": (d, d), f"{a}v_proj.weight": (d, d), f"{a}v_proj.bias": (d,),
                   f"{a}q_proj.weight": (d, d), f"{a}q_proj.bias": (d,), f"{a}out_proj.weight": (d, d),
                   f"{a}out_proj.bias": (d,)})
    _ln(shapes, f"{a}ln", d)
    _ln(shapes, f"{p}self_attn_layer_norm", d)
    _ln(shapes, f"{p}final_layer_norm", d)
    if gammas:
        shapes[f"{p}gamma_1"], shapes[f"{p}gamma_2"] = (d,), (d,)
    for m in MODS:
        f = f"{p}{m}_ffn."
        shapes.update({f"{f}0.wi_0.weight": (ffn, d), f"{f}0.wi_1.weight": (ffn, d), f"{f}3.weight": (d, ffn),
                       f"{f}3.bias": (d,)})
        _ln(shapes, f"{f}2", ffn)


def official_shapes(z: OfficialSize = OfficialSize()) -> dict[str, tuple[int, ...]]:
    D, H, G = z.d, z.heads, z.grid
    s: dict[str, tuple[int, ...]] = {"logit_scale": ()}
    e, t, i, a = "encoder_wrapper.", "encoder_wrapper.text_adapter.", "encoder_wrapper.image_adapter.", \
        "encoder_wrapper.audio_adapter."
    s.update({f"{t}embed_tokens.weight": (z.vocab, D), f"{t}cls_embedding": (1, 1, D),
              f"{t}embed_positions.weight": (514, D), f"{t}rp_bucket": (1024, 1024),
              f"{t}rel_pos_table_list.0.weight": (2 * z.text_buckets - 1 + 3, H)})
    s.update({f"{i}embed_images.0.weight": (D // 4, 3, 4, 4), f"{i}embed_images.0.bias": (D // 4,),
              f"{i}embed_images.3.weight": (D // 4, D // 4, 2, 2), f"{i}embed_images.3.bias": (D // 4,),
              f"{i}embed_images.6.weight": (D, D // 4, 2, 2), f"{i}embed_images.6.bias": (D,),
              f"{i}cls_embedding": (1, 1, D), f"{i}pos_embed": (G**2 + 1, D), f"{i}position_idx": (G**2 + 1,),
              f"{i}rp_bucket": (G**2 + 1, G**2 + 1), f"{i}rel_pos_table_list.0.weight": ((2 * G - 1) ** 2 + 3, H)})
    _ln(s, f"{i}embed_images.1.layer_norm", D // 4)
    _ln(s, f"{i}embed_images.4.layer_norm", D // 4)
    for j, k in enumerate((10, 3, 3, 3, 3, 2, 2)):
        s[f"{a}embed_audios.0.conv_layers.{j}.0.weight"] = (z.conv, 1 if j == 0 else z.conv, k)
        _ln(s, f"{a}embed_audios.0.conv_layers.{j}.2.1", z.conv)
    _ln(s, f"{a}embed_audios.2", z.conv)
    s.update({f"{a}embed_audios.3.weight": (D, z.conv), f"{a}embed_audios.3.bias": (D,), f"{a}cls_embedding": (1, 1, D),
              f"{a}cls_pos_embed": (1, 1, D), f"{a}mask_embedding": (1, D),
              f"{a}rel_pos_table_list.0.weight": (2 * z.audio_buckets - 1 + 3, H)})
    for j in range(1, z.pos_convs + 1):
        s[f"{a}embed_positions.{j}.0.weight"] = (D, D // z.pos_groups, z.pos_kernel)
        s[f"{a}embed_positions.{j}.0.bias"] = (D,)
    s[f"{e}fusion_model.version"] = (1,)
    for n in range(z.layers):
        _layer(s, f"{e}fusion_model.layers.{n}.", D, z.ffn, gammas=True)
    for m in MODS:
        _ln(s, f"{e}fusion_model.{m}_layer_norm", D)
        s[f"{m}_proj.weight"], s[f"{m}_proj.bias"] = (D, D), (D,)
        s[f"decoder_{m}_embed.weight"], s[f"decoder_{m}_embed.bias"] = (z.dec_d, D), (z.dec_d,)
        s[f"{m}_mask_token"] = (1, z.dec_d)
        s[f"{m}_mask_head.weight"], s[f"{m}_mask_head.bias"] = (D, z.dec_d), (D,)
        s[f"decoder_wrapper.{m}_adapter.cls_embedding"] = (1, 1, z.dec_d)
        _ln(s, f"decoder_wrapper.fusion_model.{m}_layer_norm", z.dec_d)
    s.update({"decoder_wrapper.text_adapter.embed_positions.weight": (514, z.dec_d),
              "decoder_wrapper.image_adapter.pos_embed": (G**2 + 1, z.dec_d),
              "decoder_wrapper.image_adapter.position_idx": (G**2 + 1,),
              "decoder_wrapper.audio_adapter.embed_positions.weight": (1026, z.dec_d),
              "decoder_wrapper.audio_adapter.mask_embedding": (1, z.dec_d), "decoder_wrapper.fusion_model.version": (1,)})
    for n in range(z.dec_layers):
        _layer(s, f"decoder_wrapper.fusion_model.layers.{n}.", z.dec_d, z.dec_ffn, gammas=False)
    return s


def official_checkpoint(z: OfficialSize = OfficialSize(), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.zeros(shape, dtype=torch.long) if k.endswith(("rp_bucket", "position_idx"))
                else 0.3 * torch.randn(shape, generator=g)) for k, shape in official_shapes(z).items()}
