// Launchers of the CUDA kernels in cuda_kernels.cu (called by ops_cuda.cpp on the current stream).
#pragma once

#include <ATen/core/Tensor.h>

namespace supervit {
namespace cuda {

// Largest row (N-1 patch scores) the one-block shared-memory sort takes (4096 8-byte keys: 32 KiB of shared
// memory, 1024 threads); longer rows run on the reference backend.
constexpr int64_t kMaxSortTokens = 4096;
// Head dims the memory-efficient SDPA kernel behind the CUDA attention takes: multiples of 8, at most 256.
constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kHeadDimMultiple = 8;

// The dtypes the CUDA kernels take: fp32, fp16, bf16 (contract.KERNEL_DTYPES states the same to Python).
inline bool is_kernel_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// idx [B, k] = top-k of score [B, M] (fp32/fp16/bf16, M <= kMaxSortTokens); when x is defined also
// out [B, k+1, C] = [x[:, 0], x[b, 1 + idx[b]]] in the same launch (the fused prune).
void topk(const at::Tensor& score, int64_t k, at::Tensor& idx, const at::Tensor& x, at::Tensor& out);
// out [B, k+1, C] = [x[:, 0], x[b, 1 + idx[b]]] (idx int64).
void gather(const at::Tensor& x, const at::Tensor& idx, at::Tensor& out);
// out [B, N, C] (zeroed by the caller): out[:, 0] = grad[:, 0], out[b, 1 + idx[b, i]] = grad[b, 1 + i].
void scatter(const at::Tensor& grad, const at::Tensor& idx, at::Tensor& out);
// score [B, N-1] = mean_h exp(scale * q[b,h,0] . k[b,h,j] - lse0[b,h]) for q, k fp32/fp16/bf16; score and
// lse0 [B, H] are fp32.
void cls_score(const at::Tensor& q, const at::Tensor& k, const at::Tensor& lse0, double scale, at::Tensor& score);

}  // namespace cuda
}  // namespace supervit
