// Declarations shared by the SuperViT extension sources (supervit._C).
//
// Layouts follow supervit/kernels/reference.py: tokens x [B, N, C] (CLS at 0), q/k/v [B, H, N, D],
// score [B, N-1] float32, idx [B, k] int64 into the N-1 patch tokens, lse [B, H, N] float32.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace supervit {

using at::Tensor;

// The attention output layout every backend returns: shape [B, H, N, D], stored token-major ([B, N, H, D]
// contiguous) so that merging the heads back into [B, N, C] is a free view. Copies only when `out` is not
// laid out so already.
Tensor token_major(const Tensor& out);

// Argument checks shared by every device (each raises a c10::Error naming the argument).
void check_tokens(const Tensor& x, const char* name);                      // [B, N, C], N >= 2
void check_index(const Tensor& idx, const Tensor& x, int64_t num_patch);   // [B, k], int64/int32, 1 <= k <= N-1
void check_score(const Tensor& score, int64_t k);                          // [B, M] float, 1 <= k <= M
void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v);        // [B, H, N, D], one shape/dtype/device

// Device-generic attention written with ATen ops (the "math" path): the CUDA fallback for dtypes and shapes
// the fused SDPA kernels do not take (fp64, unaligned head dims), and the score-gradient term on CUDA.
std::tuple<Tensor, Tensor, Tensor> attention_forward_math(
    const Tensor& q, const Tensor& k, const Tensor& v, double scale, bool return_cls_score);
std::tuple<Tensor, Tensor, Tensor> attention_backward_math(
    const Tensor& grad_out, const Tensor& grad_score, const Tensor& q, const Tensor& k, const Tensor& v,
    const Tensor& out, const Tensor& lse, double scale, bool has_score_grad);
// dq[:, :, 0] += scale * dS0 @ k and dk += scale * dS0^T q0 for the CLS score (in place, any device).
void add_score_grad_math(const Tensor& grad_score, const Tensor& q, const Tensor& k, const Tensor& lse,
                         double scale, Tensor& dq, Tensor& dk);

}  // namespace supervit
