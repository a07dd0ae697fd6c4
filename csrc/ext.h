// Declarations shared by the SuperViT extension sources (supervit._C).
//
// The ops' schemas, output shapes and layouts are defined in Python (supervit/kernels/contract.py); the
// sources here attach the CPU and CUDA kernels to them. Layouts: tokens x [B, N, C] (CLS at 0), q/k/v
// [B, H, N, D] (any strides), score [B, N-1], idx [B, k] int64 into the N-1 patch tokens, lse [B, H, N];
// score and lse in the accumulation type.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
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

// The CPU loops' parallel policy. A parallel region wakes every OpenMP thread and ends at a barrier; when another
// process holds a core, a descheduled thread stalls the whole region for a scheduler time slice (milliseconds).
// So a thread gets a share of a loop only when that share is at least kMinWorkPerThread elements (~1-2 ms on
// one core); smaller loops run inline on the calling thread.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 22;

// f(begin, end) over [0, n) items of `work_per_item` elements each: inline, or split evenly over as many threads
// as get kMinWorkPerThread elements each.
template <typename F>
inline void parallel_over(int64_t n, int64_t work_per_item, const F& f) {
  const int64_t total = n * std::max<int64_t>(1, work_per_item);
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), total / kMinWorkPerThread);
  if (tasks <= 1 || at::in_parallel_region()) {
    if (n > 0) f(int64_t(0), n);
    return;
  }
  at::parallel_for(0, n, (n + tasks - 1) / tasks, f);
}

// Argument checks shared by every device (each raises a c10::Error naming the argument).
void check_tokens(const Tensor& x, const char* name);                      // [B, N, C], N >= 2
void check_index(const Tensor& idx, const Tensor& x, int64_t num_patch);   // [B, k], int64/int32, 1 <= k <= N-1
void check_score(const Tensor& score, int64_t k);                          // [B, M] float, 1 <= k <= M
void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v);        // [B, H, N, D], one shape/dtype/device
void check_prune(const Tensor& x, const Tensor& score, int64_t k);        // tokens, score [B, N-1], 1 <= k <= N-1
void check_gather_backward(const Tensor& grad_kept, const Tensor& idx, int64_t num_tokens);  // [B, k+1, C], [B, k]
void check_grad_score(const Tensor& grad_score, const Tensor& q);         // [B, N-1] for q [B, H, N, D]

// dq[:, :, 0] += scale * dS0 @ k and dk += scale * dS0^T q0 for the CLS score's upstream gradient (in place,
// any device; dq, dk contiguous [B, H, N, D] in the input dtype), with P0 = exp(scale * q0 . k - lse0) and
// dS0 = P0 * (g - sum(P0 * g)), g = [0, grad_score / H] over the keys.
void add_score_grad(const Tensor& grad_score, const Tensor& q, const Tensor& k, const Tensor& lse, double scale,
                    Tensor& dq, Tensor& dk);

}  // namespace supervit
