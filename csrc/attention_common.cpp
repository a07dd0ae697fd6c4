// Attention pieces shared by the CPU and CUDA kernels: the token-major output layout and the CLS-score gradient,
// written with ATen ops so that one implementation serves every device.
#include <ATen/ATen.h>

#include "ext.h"

namespace supervit {

Tensor token_major(const Tensor& out) {
  const Tensor by_token = out.transpose(1, 2);  // [B, N, H, D]
  return by_token.is_contiguous() ? out : by_token.contiguous().transpose(1, 2);
}

void add_score_grad(const Tensor& grad_score, const Tensor& q, const Tensor& k, const Tensor& lse, double scale,
                    Tensor& dq, Tensor& dk) {
  const auto acc = accumulation_type(q.scalar_type());
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

}  // namespace supervit
