"""The pretraining losses against plain re-statements (explicit loops and formulas), on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from onepeace.losses import LOGIT_SCALE_MAX, bounded_logit_scale, contrastive_loss, denoising_loss, target_positions
from onepeace.model import ModalityOutput


def unit_rows(*shape, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


def clip_by_hand(a, b, scale):
    """Mean of -log softmax at the diagonal, rows of a against b and rows of b against a."""
    n, total = a.shape[0], 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            logits = [scale * float(x[i] @ y[j]) for j in range(n)]
            total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    return total / (2 * n)


# ------------------------------------------------------------------------------------------------
# Contrastive
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_scale", [0.0, math.log(1 / 0.07), LOGIT_SCALE_MAX])
def test_contrastive_is_symmetric_cross_entropy_at_temperature_exp_logit_scale(log_scale):
    a, b = unit_rows(5, 8), unit_rows(5, 8)
    loss = contrastive_loss(a, b, torch.tensor(log_scale, dtype=torch.float64))
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(clip_by_hand(a, b, math.exp(log_scale)), rel=1e-10)


def test_perfect_alignment_gives_low_loss_and_misalignment_a_high_one():
    eye = torch.eye(4, 8)
    scale = torch.tensor(LOGIT_SCALE_MAX)
    assert contrastive_loss(eye, eye, scale).item() < 1e-6
    assert contrastive_loss(eye, eye.roll(1, dims=0), scale).item() > 50


def test_gradient_reaches_logit_scale_and_features():
    a = unit_rows(4, 6, dtype=torch.float32).requires_grad_()
    b = unit_rows(4, 6, dtype=torch.float32).requires_grad_()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    contrastive_loss(a, b, logit_scale).backward()
    assert logit_scale.grad is not None and logit_scale.grad.item() != 0
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    # Aligned pairs: a sharper temperature lowers the loss, so the gradient on the scale is negative.
    eye = torch.eye(4, 6)
    logit_scale.grad = None
    contrastive_loss(eye, eye, logit_scale).backward()
    assert logit_scale.grad.item() < 0


def test_contrastive_computes_in_fp32_from_bf16_features():
    a, b = unit_rows(6, 16, dtype=torch.float32), unit_rows(6, 16, dtype=torch.float32)
    a16, b16 = a.bfloat16().requires_grad_(), b.bfloat16()
    scale = torch.tensor(math.log(1 / 0.07))
    loss = contrastive_loss(a16, b16, scale)
    assert loss.dtype == torch.float32
    expected = clip_by_hand(a16.detach().double(), b16.double(), math.exp(scale.item()))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert a16.grad.dtype == torch.bfloat16


def test_contrastive_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(4, 6\) and \(3, 6\)"):
        contrastive_loss(torch.randn(4, 6), torch.randn(3, 6), torch.tensor(0.0))


def test_bounded_logit_scale_clamps_and_passes_only_inward_gradients():
    assert LOGIT_SCALE_MAX == pytest.approx(math.log(100.0))
    for value, grad, passed in ((1.0, 0.3, 0.3), (5.0, 0.3, 0.3), (5.0, -0.3, 0.0), (-1.0, 0.3, 0.0),
                                (-1.0, -0.3, -0.3)):
        p = torch.tensor([value], requires_grad=True)
        out = bounded_logit_scale(p)
        assert out.item() == pytest.approx(min(max(value, 0.0), LOGIT_SCALE_MAX))
        out.backward(torch.tensor([grad]))
        assert p.grad.item() == pytest.approx(passed)


# ------------------------------------------------------------------------------------------------
# Denoising
# ------------------------------------------------------------------------------------------------

def dcl_by_hand(pred, target, masked, valid, temperature, smoothing):
    """For each masked (b, n): smoothed cross-entropy over all valid (b', n') of the batch; mean."""
    B, N, _ = pred.shape
    keys = [(j, m) for j in range(B) for m in range(N) if valid[j, m]]
    losses = []
    for i in range(B):
        for n in range(N):
            if not masked[i, n]:
                continue
            q = pred[i, n] / pred[i, n].norm()
            logits = [float(q @ (target[j, m] / target[j, m].norm())) / temperature for j, m in keys]
            log_z = math.log(sum(math.exp(v) for v in logits))
            nll = [log_z - v for v in logits]
            positive = keys.index((i, n))
            others = [v for k, v in enumerate(nll) if k != positive]
            # fairseq's label smoothing, as the reference's criterion: the positive keeps 1 - eps, each
            # other key gets eps / (number of keys - 1).
            losses.append((1 - smoothing) * nll[positive] + smoothing * sum(others) / len(others))
    return sum(losses) / len(losses)


@pytest.fixture
def dcl_case():
    """3 samples of 1 + 6 tokens: sample 1 has 2 padding slots, sample 2 one; varied masks (none in sample 2)."""
    B, N, D = 3, 7, 5
    padding = torch.zeros(B, N, dtype=torch.bool)
    padding[1, 5:] = True
    padding[2, 6:] = True
    masked = torch.zeros(B, N, dtype=torch.bool)
    masked[0, [1, 3, 4]] = True
    masked[1, [2]] = True
    pred = torch.randn(B, N, D, dtype=torch.float64)
    target = torch.randn(B, N, D, dtype=torch.float64)
    return pred, target, masked, target_positions(padding, B, N, "cpu"), padding


def test_target_positions_exclude_cls_and_padding(dcl_case):
    *_, valid, padding = dcl_case
    assert not valid[:, 0].any()
    assert torch.equal(valid[:, 1:], ~padding[:, 1:])
    assert target_positions(None, 2, 4, "cpu").tolist() == [[False, True, True, True]] * 2
    with pytest.raises(ValueError, match=r"expected \(2, 5\)"):
        target_positions(padding, 2, 5, "cpu")


@pytest.mark.parametrize("temperature,smoothing", [(0.4, 0.1), (0.4, 0.0), (1.0, 0.3)])
def test_denoising_matches_loop_over_masked_positions(dcl_case, temperature, smoothing):
    pred, target, masked, valid, _ = dcl_case
    loss = denoising_loss(pred, target, masked, valid, temperature=temperature, label_smoothing=smoothing)
    expected = dcl_by_hand(pred, target, masked, valid, temperature, smoothing)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_denoising_defaults_are_temperature_04_and_smoothing_01(dcl_case):
    pred, target, masked, valid, _ = dcl_case
    assert denoising_loss(pred, target, masked, valid).item() == pytest.approx(
        dcl_by_hand(pred, target, masked, valid, 0.4, 0.1), rel=1e-10)


def test_denoising_gradient_reaches_pred_and_never_target(dcl_case):
    pred, target, masked, valid, _ = dcl_case
    pred.requires_grad_()
    target.requires_grad_()
    denoising_loss(pred, target, masked, valid).backward()
    assert target.grad is None
    touched = pred.grad.abs().sum(-1) > 0
    assert torch.equal(touched, masked)  # only the queries get gradient


def test_denoising_computes_in_fp32_from_bf16(dcl_case):
    pred, target, masked, valid, _ = dcl_case
    pred16, target16 = pred.bfloat16().requires_grad_(), target.bfloat16()
    loss = denoising_loss(pred16, target16, masked, valid)
    assert loss.dtype == torch.float32
    expected = dcl_by_hand(pred16.detach().double(), target16.double(), masked, valid, 0.4, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert pred16.grad.dtype == torch.bfloat16


def test_nothing_masked_gives_a_zero_that_backpropagates(dcl_case):
    pred, target, _, valid, _ = dcl_case
    pred = pred.float().requires_grad_()
    loss = denoising_loss(pred, target.float(), torch.zeros_like(valid), valid)
    assert loss.ndim == 0 and loss.item() == 0 and loss.dtype == torch.float32
    loss.backward()
    assert pred.grad is not None and not pred.grad.any()


@pytest.mark.parametrize("where", [(0, 0), (1, 6)], ids=["cls", "padding"])
def test_masked_position_without_a_target_is_an_error(dcl_case, where):
    pred, target, masked, valid, _ = dcl_case
    masked = masked.clone()
    masked[where] = True
    with pytest.raises(ValueError, match=rf"sample {where[0]}, position {where[1]}"):
        denoising_loss(pred, target, masked, valid)


def test_denoising_rejects_mismatched_shapes(dcl_case):
    pred, target, masked, valid, _ = dcl_case
    with pytest.raises(ValueError, match="one \\[B, N, D\\] shape"):
        denoising_loss(pred, target[:, :-1], masked, valid)
    with pytest.raises(ValueError, match="must be \\[B, N\\]"):
        denoising_loss(pred, target, masked[:, :-1], valid)


def test_encoder_masked_positions_are_always_valid_targets():
    """What the trainer passes: ModalityOutput.masked_positions() against target_positions()."""
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    keep = torch.tensor([[0, 3], [2, -1]])  # content indices (position - 1); -1 = padding slot
    out = ModalityOutput(tokens=torch.randn(2, 3, 4), padding_mask=None, keep=keep,
                         full_padding_mask=padding, num_tokens=6)
    masked = out.masked_positions()
    valid = target_positions(out.full_padding_mask, 2, out.num_tokens, "cpu")
    assert masked.tolist() == [[False, False, True, True, False, True], [False, True, True, False, False, False]]
    assert not (masked & ~valid).any()
    pred = torch.randn(2, 6, 4, requires_grad=True)
    denoising_loss(pred, torch.randn(2, 6, 4), masked, valid).backward()
