// Attention with the CLS score written with ATen ops only, so it runs on any device.
//
// CUDA uses it where the fused SDPA kernels do not apply (fp64, head dims the memory-efficient kernel does
// not take) and for the score-gradient term; it is registered as ext_attention_{forward,backward}_math so the
// same code is tested on CPU. It materializes the [B, H, N, N] probabilities: a fallback, not a fast path.
#include <ATen/ATen.h>

#include "ext.h"

namespace supervit {
namespace {

at::ScalarType acc_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

Tensor token_major(const Tensor& out) {
  const Tensor by_token = out.transpose(1, 2);  // [B, N, H, D]
  return by_token.is_contiguous() ? out : by_token.contiguous().transpose(1, 2);
}

std::tuple<Tensor, Tensor, Tensor> attention_forward_math(
    const Tensor& q, const Tensor& k, const Tensor& v, double scale, bool return_cls_score) {
  check_qkv(q, k, v);
  const auto acc = acc_type(q);
  const int64_t batch = q.size(0), tokens = q.size(2);
  Tensor logits = at::matmul(q.to(acc), k.to(acc).transpose(-2, -1)).mul_(scale);  // [B, H, N, N]
  Tensor lse = at::logsumexp(logits, {-1});                                          // [B, H, N]
  Tensor probs = logits.sub_(lse.unsqueeze(-1)).exp_();
  Tensor out = token_major(at::matmul(probs, v.to(acc)).to(q.scalar_type()));      // [B, H, N, D] token-major
  Tensor score;
  if (return_cls_score) {
    TORCH_CHECK(tokens >= 2, "return_cls_score needs N >= 2 tokens, got ", tokens);
    score = probs.select(2, 0).narrow(-1, 1, tokens - 1).mean(1).contiguous();  // [B, N-1]
  } else {
    score = at::empty({batch, 0}, q.options().dtype(acc));
  }
  return {out, score, lse.contiguous()};
}

void add_score_grad_math(const Tensor& grad_score, const Tensor& q, const Tensor& k, const Tensor& lse,
                         double scale, Tensor& dq, Tensor& dk) {
  const auto acc = acc_type(q);
  const int64_t heads = q.size(1);
  Tensor q0 = q.select(2, 0).to(acc);                                                 // [B, H, D]
  Tensor ka = k.to(acc);                                                               // [B, H, N, D]
  Tensor lse0 = lse.select(2, 0).to(acc).unsqueeze(-1);                                // [B, H, 1]
  Tensor p0 = at::matmul(ka, q0.unsqueeze(-1)).squeeze(-1).mul_(scale).sub_(lse0).exp_();  // [B, H, N]
  Tensor g = at::constant_pad_nd(grad_score.to(acc), {1, 0}).div_(heads).unsqueeze(1);   // [B, 1, N]
  Tensor row_dot = (p0 * g).sum(-1, /*keepdim=*/true);                                // [B, H, 1]
  Tensor ds = p0.mul_(g - row_dot).mul_(scale);                                        // [B, H, N]
  dq.select(2, 0).add_(at::matmul(ds.unsqueeze(-2), ka).squeeze(-2));                  // [B, H, D]
  dk.add_(ds.unsqueeze(-1) * q0.unsqueeze(-2));                                        // [B, H, N, D]
}

std::tuple<Tensor, Tensor, Tensor> attention_backward_math(
    const Tensor& grad_out, const Tensor& grad_score, const Tensor& q, const Tensor& k, const Tensor& v,
    const Tensor& out, const Tensor& lse, double scale, bool has_score_grad) {
  check_qkv(q, k, v);
  (void)out;
  const auto acc = acc_type(q);
  const int64_t tokens = q.size(2);
  Tensor qa = q.to(acc), ka = k.to(acc), va = v.to(acc), go = grad_out.to(acc);
  Tensor logits = at::matmul(qa, ka.transpose(-2, -1)).mul_(scale);                  // [B, H, N, N]
  Tensor probs = logits.sub_(lse.to(acc).unsqueeze(-1)).exp_();
  Tensor grad_probs = at::matmul(go, va.transpose(-2, -1));                           // [B, H, N, N]
  Tensor row_dot = (grad_probs * probs).sum(-1, /*keepdim=*/true);                    // [B, H, N, 1]
  Tensor grad_logits = probs * (grad_probs - row_dot) * scale;                         // [B, H, N, N]
  Tensor dq = at::matmul(grad_logits, ka);
  Tensor dk = at::matmul(grad_logits.transpose(-2, -1), qa);
  Tensor dv = at::matmul(probs.transpose(-2, -1), go).to(v.scalar_type()).contiguous();
  if (has_score_grad) {  // linear in the upstream grads: the same term the fused CUDA path adds
    TORCH_CHECK(grad_score.dim() == 2 && grad_score.size(0) == q.size(0) && grad_score.size(1) == tokens - 1,
                "grad_score must be [B, N-1] = [", q.size(0), ", ", tokens - 1, "], got ", grad_score.sizes());
    add_score_grad_math(grad_score, q, k, lse, scale, dq, dk);
  }
  dq = dq.to(q.scalar_type()).contiguous();
  dk = dk.to(k.scalar_type()).contiguous();
  return {dq, dk, dv};
}

}  // namespace supervit
