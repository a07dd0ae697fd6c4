// Declarations shared by the SuperViT extension sources (supervit._C).
//
// The ops' schemas, output shapes and layouts are defined in Python (supervit/kernels/contract.py); the
// sources here attach the CPU and CUDA kernels to them. Layouts: tokens x [B, N, C] (CLS at 0), q/k/v
// [B, H, N, D] (any strides), score [B, N-1], idx [B, k] int64 into the N-1 patch tokens, lse [B, H, N];
// score and lse in the accumulation type.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace supervit {

using at::Tensor;

// Accumulation type of score and lse: float64 for float64 inputs, else float32 (contract.accumulation_dtype).
inline at::ScalarType accumulation_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The attention output layout every backend returns: shape [B, H, N, D], stored token-major ([B, N, H, D]
// contiguous) so that merging the heads back into [B, N, C] is a free view. Copies only when `out` is not
// laid out so already.
Tensor token_major(const Tensor& out);

// Argument checks shared by every device (each raises a c10::Error naming the argument).
void check_tokens(const Tensor& x, const char* name);                      // [B, N, C], N >= 2
void check_index(const Tensor& idx, const Tensor& x, int64_t num_patch);   // [B, k], int64/int32, 1 <= k <= N-1
void check_score(const Tensor& score, int64_t k);                          // [B, M] float, 1 <= k <= M
void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v);        // [B, H, N, D], one shape/dtype/device

// dq[:, :, 0] += scale * dS0 @ k and dk += scale * dS0^T q0 for the CLS score's upstream gradient (in place,
// any device; dq, dk contiguous [B, H, N, D] in the input dtype), with P0 = exp(scale * q0 . k - lse0) and
// dS0 = P0 * (g - sum(P0 * g)), g = [0, grad_score / H] over the keys.
void add_score_grad(const Tensor& grad_score, const Tensor& q, const Tensor& k, const Tensor& lse, double scale,
                    Tensor& dq, Tensor& dk);

}  // namespace supervit
