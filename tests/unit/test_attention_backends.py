"""Every attention backend equals the explicit reference, outputs and gradients."""

import logging

import pytest
import torch

from onepeace.config import model_config
from onepeace.model import OnePeace
from onepeace.ops import attention as ops
from onepeace.ops.attention import (AttentionBias, attention, available_backends, flex_backward_supported,
                                    resolve_backend)

CPU_BACKENDS = [b for b in available_backends("cpu") if b != "math"]
NO_CUDA = "needs CUDA: xformers and compiled FlexAttention have no CPU kernels"
NO_FLEX_CPU_GRAD = f"FlexAttention has no CPU backward in torch {torch.__version__} (outputs are still compared)"
CPU_GRAD_BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(b == "flex" and not flex_backward_supported("cpu"),
                                                              reason=NO_FLEX_CPU_GRAD)) for b in CPU_BACKENDS]


def reference_attention(q, k, v, table, index_map, positions, key_padding):
    """Plain per-sample, per-head loops over the definition."""
    B, H, L, Dh = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        pos = positions[min(b, positions.shape[0] - 1)]
        for h in range(H):
            scores = (q[b, h] @ k[b, h].T) / Dh**0.5
            for i in range(L):
                for j in range(L):
                    scores[i, j] = scores[i, j] + table[index_map[pos[i], pos[j]], h]
                    if key_padding is not None and key_padding[b, j]:
                        scores[i, j] = float("-inf")
            out[b, h] = torch.softmax(scores, -1) @ v[b, h]
    return out


def random_case(B=3, H=2, L=9, Dh=8, shared_positions=False, padded=True):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, L, Dh, generator=g, requires_grad=True) for _ in range(3))
    table = torch.randn(7, H, generator=g, requires_grad=True)
    index_map = torch.randint(0, 7, (12, 12), generator=g)
    positions = torch.randint(0, 12, (1 if shared_positions else B, L), generator=g)
    key_padding = None
    if padded:
        key_padding = torch.zeros(B, L, dtype=torch.bool)
        key_padding[1, 6:] = True
        key_padding[2, 2:4] = True
    return q, k, v, table, index_map, positions, key_padding


def run(backend, q, k, v, table, index_map, positions, key_padding):
    bias = AttentionBias(table, index_map, positions, key_padding, q.shape[0], q.shape[2])
    return attention(q, k, v, bias, backend)


def grads(out, *leaves):
    g = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), leaves)
    return g


@pytest.mark.parametrize("shared_positions", [False, True])
def test_math_matches_plain_definition(shared_positions):
    case = random_case(shared_positions=shared_positions)
    ref = reference_attention(*case)
    got = run("math", *case)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("padded", [False, True])
def test_backend_matches_math(backend, padded):
    case = random_case(padded=padded)
    with torch.no_grad():
        torch.testing.assert_close(run(backend, *case), run("math", *case), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_GRAD_BACKENDS)
@pytest.mark.parametrize("padded", [False, True])
def test_backend_gradients_match_math(backend, padded):
    case = random_case(padded=padded)
    q, k, v, table = case[:4]
    ref = run("math", *case)
    got = run(backend, *case)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(got, q, k, v, table), grads(ref, q, k, v, table)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(flex_backward_supported("cpu"), reason="this torch can train FlexAttention on CPU")
def test_flex_training_on_cpu_is_refused_with_a_reason():
    q, k, v, table, index_map, positions, pad = random_case()
    with pytest.raises(ValueError, match="'flex' cannot train on cpu.*use 'auto' or 'sdpa'"):
        run("flex", q, k, v, table, index_map, positions, pad)


def test_no_table_is_padding_only():
    q, k, v, _, _, _, pad = random_case()
    bias = AttentionBias(None, None, None, pad, q.shape[0], q.shape[2])
    ref = reference_attention(q, k, v, torch.zeros(1, q.shape[1]), torch.zeros(1, 1, dtype=torch.long),
                              torch.zeros(1, q.shape[2], dtype=torch.long), pad)
    with torch.no_grad():
        for backend in ["math"] + CPU_BACKENDS:
            torch.testing.assert_close(attention(q, k, v, bias, backend), ref, atol=1e-5, rtol=1e-5)


def test_fully_padded_query_row_gives_zeros_not_nan():
    q, k, v, table, index_map, positions, pad = random_case()
    pad[0] = True
    out = run("math", q, k, v, table, index_map, positions, pad)
    assert torch.isfinite(out).all() and (out[0] == 0).all()


def test_bad_shapes_are_value_errors():
    q, k, v, table, index_map, positions, pad = random_case()
    with pytest.raises(ValueError, match=r"q, k, v must all be \[B, H, L, Dh\]"):
        run("math", q, k[:, :, :3], v, table, index_map, positions, pad)
    bias = AttentionBias(table, index_map, positions, pad, 5, q.shape[2])
    with pytest.raises(ValueError, match="attention bias is for batch 5"):
        attention(q, k, v, bias, "sdpa")
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        resolve_backend("fast", "cpu")


def test_auto_picks_sdpa_on_cpu_and_logs_once(caplog):
    resolve_backend.cache_clear()
    with caplog.at_level(logging.INFO, logger="onepeace.ops.attention"):
        assert resolve_backend("auto", "cpu") == "sdpa"
        assert resolve_backend("auto", "cpu") == "sdpa"
    assert sum("attention backend auto -> sdpa" in r.message for r in caplog.records) == 1


def test_xformers_is_refused_on_cpu_with_a_reason():
    with pytest.raises(ValueError, match="xformers.*not available on cpu"):
        resolve_backend("xformers", "cpu")


# ---- the whole model: pair input, padding and dropped tokens ---------------------------------------


def model_case():
    model = OnePeace(model_config("tiny", drop_path_rate=0.0))
    with torch.no_grad():
        for t in model.rel_bias.tables.values():
            t.normal_(0, 1.0)  # make the bias matter
    B = 3
    g = torch.Generator().manual_seed(2)
    text = torch.randint(3, 1000, (B, 9), generator=g)
    text[1, 6:] = 0  # padding in the middle of the pair sequence
    image = torch.randn(B, 3, 64, 64, generator=g)
    image_keep = torch.stack([torch.randperm(16, generator=g)[:5].sort().values for _ in range(B)])
    text_keep = torch.tensor([[0, 2, 3, 5, 8], [0, 1, 4, 5, -1], [1, 2, 3, -1, -1]])
    return model, dict(text=text, image=image, image_keep=image_keep, text_keep=text_keep)


def model_outputs(model, backend, inputs):
    model.config.attention_backend = backend
    model.zero_grad()
    out = model.forward_encoder(**inputs)
    flat = torch.cat([out["text"].tokens.flatten(), out["image"].tokens.flatten()])
    (flat * torch.linspace(-1, 1, flat.numel())).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return flat.detach(), grads


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_model_outputs_match_math(backend):
    model, inputs = model_case()
    with torch.no_grad():
        outputs = {}
        for name in ("math", backend):
            model.config.attention_backend = name
            out = model.forward_encoder(**inputs)
            outputs[name] = torch.cat([out["text"].tokens.flatten(), out["image"].tokens.flatten()])
    torch.testing.assert_close(outputs[backend], outputs["math"], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", CPU_GRAD_BACKENDS)
def test_model_backends_match_math(backend):
    model, inputs = model_case()
    ref_out, ref_grads = model_outputs(model, "math", inputs)
    out, g = model_outputs(model, backend, inputs)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=1e-4)
    assert set(g) == set(ref_grads)
    assert ref_grads["rel_bias.tables.text"].abs().sum() > 0 and ref_grads["rel_bias.tables.image"].abs().sum() > 0
    for name in ref_grads:
        torch.testing.assert_close(g[name], ref_grads[name], atol=2e-5, rtol=1e-3, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("backend", ["flex", "xformers", "sdpa"])
def test_cuda_backends_match_math(backend):
    if backend == "xformers" and not ops.xformers_available("cuda"):
        pytest.skip("xformers kernels do not load for this torch build")
    model, inputs = model_case()
    model = model.cuda()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    ref_out, ref_grads = model_outputs(model, "math", inputs)
    out, g = model_outputs(model, backend, inputs)  # flex is compiled on CUDA
    torch.testing.assert_close(out, ref_out, atol=2e-3, rtol=2e-3)
    for name in ref_grads:
        torch.testing.assert_close(g[name], ref_grads[name], atol=2e-3, rtol=2e-2, msg=name)
