"""The one attention test oracle of every backend's tests (extension, Triton interpreter, GPU).

Truth is float64 autograd through softmax attention; the yardstick is the reference backend
(``reference.attention_forward``/``attention_backward``) run in the inputs' own precision. The rule, in the
FlashAttention style: a kernel's max error against the truth is at most twice the reference's, plus a floor.
Also: scores full of exact ties for the top-k tests.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from supervit.kernels import reference

# Absolute floor per input dtype, added to 2x the same-precision reference error (with half an ulp of the output).
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-5, torch.bfloat16: 1e-4}


class AttentionValues(NamedTuple):
    """Forward outputs and input gradients of one attention call."""

    out: torch.Tensor  # [B, H, N, D]
    score: torch.Tensor  # [B, N-1]
    lse: torch.Tensor  # [B, H, N]
    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor


def attention_truth(q, k, v, scale, grad_out, grad_score) -> AttentionValues:
    """Everything in float64 with autograd; ``grad_out``/``grad_score`` None means no upstream grad there."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    logits = q64 @ k64.transpose(-2, -1) * scale  # [B, H, N, N]
    probs = torch.softmax(logits, dim=-1)
    out, score = probs @ v64, probs[:, :, 0, 1:].mean(dim=1)
    loss = out.new_zeros(())
    if grad_out is not None:
        loss = loss + (out * grad_out.double()).sum()
    if grad_score is not None:
        loss = loss + (score * grad_score.double()).sum()
    grads = torch.autograd.grad(loss, (q64, k64, v64), allow_unused=True)
    grads = tuple(torch.zeros_like(q64) if g is None else g for g in grads)
    return AttentionValues(out.detach(), score.detach(), torch.logsumexp(logits, -1).detach(), *grads)


def attention_same_precision(q, k, v, scale, grad_out, grad_score) -> AttentionValues:
    """The same values from the reference backend run in the inputs' own dtype."""
    out, score, lse = reference.attention_forward(q, k, v, scale, True)
    go = torch.zeros_like(out) if grad_out is None else grad_out
    gs = score[:, :0] if grad_score is None else grad_score
    grads = reference.attention_backward(go, gs, q, k, v, out, lse, scale, grad_score is not None)
    return AttentionValues(out, score, lse, *grads)


def max_err(a, b) -> float:
    """max |a - b| in float64 (0 for empty tensors)."""
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_within_rule(name, got, same_precision, truth, floor):
    """error(got vs truth) <= 2 x error(same-precision reference vs truth) + floor.

    ``floor`` grows by half an ulp of ``got``'s dtype at the largest |truth|: a result stored in that dtype cannot be
    closer, and on tiny tensors the reference's max error can fall below one rounding step by luck.
    """
    if got.numel() and got.dtype != torch.float64:
        floor += 0.5 * torch.finfo(got.dtype).eps * truth.abs().max().item()
    err_k, err_r = max_err(got, truth), max_err(same_precision, truth)
    assert err_k <= 2 * err_r + floor, (f"{name}: kernel error {err_k:.3g} > 2 x reference error {err_r:.3g} "
                                        f"+ {floor:.3g}")


def assert_attention_within_rule(name, got: AttentionValues, same_precision: AttentionValues,
                                 truth: AttentionValues, dtype, fields=AttentionValues._fields):
    """``assert_within_rule`` on every field named in ``fields`` (shapes must match the truth's)."""
    for field in fields:
        g, s, t = getattr(got, field), getattr(same_precision, field), getattr(truth, field)
        assert g.shape == t.shape, f"{name} {field}: shape {tuple(g.shape)} != {tuple(t.shape)}"
        assert_within_rule(f"{name} {field}", g, s, t, FLOOR[dtype])


def tied_scores(batch, num, dtype=torch.float32, device="cpu", levels=4, generator=None):
    """Scores [batch, num] with many exact ties (the values -1, 0, 1, 2 for ``levels`` 4), signed zeros included."""
    s = torch.randint(0, levels, (batch, num), generator=generator).to(dtype) - 1.0
    s = torch.where(torch.rand(batch, num, generator=generator) < 0.2, torch.full_like(s, -0.0), s)
    return s.to(device)
