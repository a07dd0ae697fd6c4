"""Shared helpers of the Triton kernel tests: float64 ground truth and the DESIGN.md tolerance rule."""
from __future__ import annotations

import os

import torch

from supervit.kernels import reference

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def attention_truth(q, k, v, scale, grad_out, grad_score):
    """(out, score, dq, dk, dv) of softmax attention computed in float64 with autograd.

    ``grad_out``/``grad_score`` may be None (no upstream gradient on that output).
    """
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    probs = torch.softmax(q64 @ k64.transpose(-2, -1) * scale, dim=-1)  # [B, H, N, N]
    out = probs @ v64
    score = probs[:, :, 0, 1:].mean(dim=1)  # [B, N-1]
    loss = out.new_zeros(())
    if grad_out is not None:
        loss = loss + (out * grad_out.double()).sum()
    if grad_score is not None:
        loss = loss + (score * grad_score.double()).sum()
    dq, dk, dv = torch.autograd.grad(loss, (q64, k64, v64), allow_unused=True)
    dq, dk, dv = ((g if g is not None else torch.zeros_like(t)) for g, t in ((dq, q64), (dk, k64), (dv, v64)))
    return out.detach(), score.detach(), dq, dk, dv


def attention_lowp_reference(q, k, v, scale, grad_out, grad_score):
    """(out, score, dq, dk, dv) of the reference composite run in the inputs' own dtype (autograd)."""
    ql, kl, vl = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, score = reference.attention(ql, kl, vl, scale, return_cls_score=True)
    loss = out.new_zeros((), dtype=torch.float32)
    if grad_out is not None:
        loss = loss + (out.float() * grad_out.float()).sum()
    if grad_score is not None:
        loss = loss + (score.float() * grad_score.float()).sum()
    dq, dk, dv = torch.autograd.grad(loss, (ql, kl, vl), allow_unused=True)
    dq, dk, dv = ((g if g is not None else torch.zeros_like(t)) for g, t in ((dq, ql), (dk, kl), (dv, vl)))
    return out.detach(), score.detach(), dq, dk, dv


def max_err(a, truth) -> float:
    return (a.double() - truth.double()).abs().max().item() if a.numel() else 0.0


def assert_within_rule(name, kernel, lowp_ref, truth, floor):
    """DESIGN.md: error(kernel vs fp64 truth) <= 2 * error(reference in the same precision) + a tiny floor.

    The floor is ``floor`` plus half an ulp of the kernel's output dtype at the largest |truth|: a result stored
    in that dtype cannot be closer, and on tiny tensors (a few hundred elements) the reference's max error can
    fall below one rounding step by luck.
    """
    err_k, err_r = max_err(kernel, truth), max_err(lowp_ref, truth)
    if kernel.numel() and kernel.dtype != torch.float64:
        floor += 0.5 * torch.finfo(kernel.dtype).eps * truth.abs().max().item()
    assert err_k <= 2 * err_r + floor, f"{name}: kernel error {err_k:.3g} > 2 x reference error {err_r:.3g} + {floor:g}"


FLOOR = {torch.float32: 1e-6, torch.float16: 1e-5, torch.bfloat16: 1e-4}


def tied_scores(batch, num, dtype=torch.float32, device="cpu", levels=4, generator=None):
    """Scores with many exact ties (a few distinct values), signed zeros included."""
    s = torch.randint(0, levels, (batch, num), generator=generator).to(dtype) - 1.0  # values -1, 0, 1, 2
    s = torch.where(torch.rand(batch, num, generator=generator) < 0.2, torch.full_like(s, -0.0), s)
    return s.to(device)
