// CUDA kernels: one-block-per-sample top-k (bitonic sort of packed 64-bit keys in shared memory), fused
// top-k + gather, gather / scatter of token rows, and the CLS-score row of attention.
//
// Packed key: order-preserving bits of the float score in the high 32 bits (-0 == +0, NaN above +inf, as
// torch.sort orders them) and (0xFFFFFFFF - index) in the low 32 bits, so one descending sort gives the
// descending score with the lower index first on ties. Padding keys are 0, below every real key.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "cuda_kernels.h"

namespace supervit {
namespace cuda {
namespace {

__device__ __forceinline__ uint32_t ordered_bits(float f) {
  if (isnan(f)) return 0xFFFFFFFFu;
  if (f == 0.0f) f = 0.0f;  // -0 -> +0
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ int64_t key_index(unsigned long long key) {
  return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFull));
}

// Copy unit: the widest of 16/8/4/2/1 bytes dividing the row size and both base addresses.
template <int kBytes> struct Unit;
template <> struct Unit<1> { using type = uint8_t; };
template <> struct Unit<2> { using type = uint16_t; };
template <> struct Unit<4> { using type = uint32_t; };
template <> struct Unit<8> { using type = uint64_t; };
template <> struct Unit<16> { using type = uint4; };

int copy_unit(int64_t row_bytes, const void* a, const void* b) {
  for (int unit = 16; unit > 1; unit >>= 1) {
    if (row_bytes % unit == 0 && reinterpret_cast<uintptr_t>(a) % unit == 0 &&
        reinterpret_cast<uintptr_t>(b) % unit == 0) {
      return unit;
    }
  }
  return 1;
}

template <typename F>
void dispatch_unit(int unit, F&& f) {
  switch (unit) {
    case 16: f(Unit<16>{}); break;
    case 8: f(Unit<8>{}); break;
    case 4: f(Unit<4>{}); break;
    case 2: f(Unit<2>{}); break;
    default: f(Unit<1>{}); break;
  }
}

// Calls f(scalar_t{}) for each dtype of is_kernel_dtype (ops_cuda.cpp refuses the rest).
template <typename F>
void dispatch_kernel_dtype(at::ScalarType t, const char* what, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, what, ": dtype must be fp32/fp16/bf16, got ", t);
  }
}

// One block per sample: sort, write idx, optionally gather [CLS] + kept rows of x.
template <typename scalar_t, typename unit_t>
__global__ void topk_kernel(const scalar_t* __restrict__ score, int64_t num, int64_t k, int pow2,
                            int64_t* __restrict__ idx, const unit_t* __restrict__ x, unit_t* __restrict__ out,
                            int64_t tokens, int64_t row_units) {
  extern __shared__ unsigned long long keys[];
  const int64_t b = blockIdx.x;
  const scalar_t* row = score + b * num;
  for (int i = threadIdx.x; i < pow2; i += blockDim.x) {
    keys[i] = i < num ? (static_cast<unsigned long long>(ordered_bits(static_cast<float>(row[i]))) << 32) |
                            static_cast<unsigned long long>(0xFFFFFFFFu - static_cast<uint32_t>(i))
                      : 0ull;
  }
  __syncthreads();
  for (int size = 2; size <= pow2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < (pow2 >> 1); t += blockDim.x) {
        const int i = 2 * stride * (t / stride) + (t % stride);
        const int j = i + stride;
        const bool descending = (i & size) == 0;
        const unsigned long long a = keys[i], c = keys[j];
        if ((a < c) == descending) {
          keys[i] = c;
          keys[j] = a;
        }
      }
      __syncthreads();
    }
  }
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) idx[b * k + i] = key_index(keys[i]);
  if (out != nullptr) {
    const unit_t* xb = x + b * tokens * row_units;
    unit_t* ob = out + b * (k + 1) * row_units;
    for (int64_t e = threadIdx.x; e < (k + 1) * row_units; e += blockDim.x) {
      const int64_t r = e / row_units, c = e - r * row_units;
      const int64_t src = r == 0 ? 0 : 1 + key_index(keys[r - 1]);
      ob[e] = xb[src * row_units + c];
    }
  }
}

// out[b, r] = x[b, r == 0 ? 0 : 1 + idx[b, r-1]] (gather, kScatter = false) or
// out[b, r == 0 ? 0 : 1 + idx[b, r-1]] = x[b, r] (scatter, kScatter = true); grid-stride over units.
template <bool kScatter, typename unit_t>
__global__ void rows_kernel(const unit_t* __restrict__ src, const int64_t* __restrict__ idx,
                            unit_t* __restrict__ dst, int64_t batch, int64_t k, int64_t tokens,
                            int64_t row_units) {
  const int64_t total = batch * (k + 1) * row_units;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % row_units;
    const int64_t r = (e / row_units) % (k + 1);
    const int64_t b = e / (row_units * (k + 1));
    int64_t t = 0;
    if (r > 0) {
      t = idx[b * k + r - 1];
      CUDA_KERNEL_ASSERT(t >= 0 && t < tokens - 1);
      t += 1;
    }
    if (kScatter) {
      dst[(b * tokens + t) * row_units + c] = src[e];
    } else {
      dst[e] = src[(b * tokens + t) * row_units + c];
    }
  }
}

// One warp per (sample, patch key j): the head-mean CLS attention probability of key j (fp32 accumulation).
template <typename scalar_t>
__global__ void cls_score_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                 const float* __restrict__ lse0, float scale, float* __restrict__ score,
                                 int64_t heads, int64_t tokens, int64_t dim) {
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.x;
  const int64_t j = 1 + int64_t(blockIdx.y) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (j >= tokens) return;  // whole warps exit together; no block-level barrier below
  float total = 0;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t bh = b * heads + h;
    const scalar_t* q0 = q + bh * tokens * dim;
    const scalar_t* kj = k + (bh * tokens + j) * dim;
    float s = 0;
    for (int64_t d = lane; d < dim; d += 32) s += static_cast<float>(q0[d]) * static_cast<float>(kj[d]);
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
    total += expf(s * scale - lse0[bh]);
  }
  if (lane == 0) score[b * (tokens - 1) + j - 1] = total / static_cast<float>(heads);
}

int grid_for(int64_t total, int threads) {
  return static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 65535));
}

void launch_rows(bool scatter, const at::Tensor& src, const at::Tensor& idx, at::Tensor& dst, int64_t tokens) {
  const int64_t batch = src.size(0), k = idx.size(1);
  const int64_t row_bytes = src.size(2) * src.element_size();
  const int unit = copy_unit(row_bytes, src.const_data_ptr(), dst.const_data_ptr());
  const int64_t row_units = row_bytes / unit;
  const int64_t total = batch * (k + 1) * row_units;
  if (total == 0) return;
  const int threads = 256;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_unit(unit, [&](auto tag) {
    using unit_t = typename decltype(tag)::type;
    const auto* s = static_cast<const unit_t*>(src.const_data_ptr());
    auto* d = static_cast<unit_t*>(dst.data_ptr());
    if (scatter) {
      rows_kernel<true, unit_t><<<grid_for(total, threads), threads, 0, stream>>>(
          s, idx.const_data_ptr<int64_t>(), d, batch, k, tokens, row_units);
    } else {
      rows_kernel<false, unit_t><<<grid_for(total, threads), threads, 0, stream>>>(
          s, idx.const_data_ptr<int64_t>(), d, batch, k, tokens, row_units);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t>
void launch_topk(const at::Tensor& score, int64_t k, int pow2, int threads, size_t shmem, at::Tensor& idx,
                 const at::Tensor& x, at::Tensor& out, int unit) {
  const bool fused = x.defined();
  const int64_t row_bytes = fused ? x.size(2) * x.element_size() : 0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_unit(unit, [&](auto tag) {
    using unit_t = typename decltype(tag)::type;
    topk_kernel<scalar_t, unit_t><<<score.size(0), threads, shmem, stream>>>(
        score.const_data_ptr<scalar_t>(), score.size(1), k, pow2, idx.data_ptr<int64_t>(),
        fused ? static_cast<const unit_t*>(x.const_data_ptr()) : nullptr,
        fused ? static_cast<unit_t*>(out.data_ptr()) : nullptr, fused ? x.size(1) : 0, row_bytes / unit);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

void topk(const at::Tensor& score, int64_t k, at::Tensor& idx, const at::Tensor& x, at::Tensor& out) {
  const int64_t batch = score.size(0), num = score.size(1);
  if (batch == 0) return;
  int pow2 = 1;
  while (pow2 < num) pow2 <<= 1;
  pow2 = std::max(pow2, 2);
  const int threads = std::max(128, std::min(1024, pow2 / 2));
  const size_t shmem = sizeof(unsigned long long) * pow2;
  const int unit =
      x.defined() ? copy_unit(x.size(2) * x.element_size(), x.const_data_ptr(), out.const_data_ptr()) : 1;
  dispatch_kernel_dtype(score.scalar_type(), "ext_topk_cuda", [&](auto tag) {  // exact in float
    using scalar_t = decltype(tag);
    launch_topk<scalar_t>(score, k, pow2, threads, shmem, idx, x, out, unit);
  });
}

void gather(const at::Tensor& x, const at::Tensor& idx, at::Tensor& out) {
  launch_rows(false, x, idx, out, x.size(1));
}

void scatter(const at::Tensor& grad, const at::Tensor& idx, at::Tensor& out) {
  launch_rows(true, grad, idx, out, out.size(1));
}

void cls_score(const at::Tensor& q, const at::Tensor& k, const at::Tensor& lse0, double scale, at::Tensor& score) {
  const int64_t batch = q.size(0), heads = q.size(1), tokens = q.size(2), dim = q.size(3);
  if (batch == 0 || tokens < 2) return;
  const int warps = 8;
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>((tokens - 1 + warps - 1) / warps));
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto tag) {
    using scalar_t = decltype(tag);
    cls_score_kernel<scalar_t><<<grid, warps * 32, 0, stream>>>(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), lse0.const_data_ptr<float>(),
        static_cast<float>(scale), score.data_ptr<float>(), heads, tokens, dim);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  dispatch_kernel_dtype(q.scalar_type(), "ext_cls_score_cuda", launch);
}

}  // namespace cuda
}  // namespace supervit
