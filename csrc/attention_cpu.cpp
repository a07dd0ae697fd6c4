// CPU attention with the CLS score: ATen's flash attention for CPU (out and logsumexp) plus an O(B*H*N*D)
// pass over the CLS query row for the score, and the matching backward.
//
// score[b, j-1] = mean_h softmax_j(scale * q[b,h,0] . k[b,h,j])   for j = 1..N-1
// Its gradient is linear in the upstream grads, so it is added to the flash backward: for the CLS query row,
// with P0 = softmax row 0 and g = [0, grad_score / H] over the keys, dS0 = P0 * (g - sum(P0 * g)), then
// dq[:, :, 0] += scale * dS0 @ k and dk += scale * dS0^T q0.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ext.h"

namespace supervit {
namespace {

// Function multi-versioning (GCC, x86-64): the hot fp32 loop gets AVX-512 / AVX2+FMA clones picked at load time,
// while the library still runs on any x86-64.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
#define SUPERVIT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SUPERVIT_CLONES
#endif

// exp(x) with a degree-7 polynomial of 2^f (relative error ~1e-8 before rounding, i.e. within an fp32 ulp), written
// without calls so that the loops below vectorize; 0 below -87 (a probability under 1e-38), NaN stays NaN.
inline float exp_f32(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float t = xc * 1.44269504088896341f;  // x log2(e) = n + f, |f| <= 1/2
  const float n = std::floor(t + 0.5f);
  const float f = (t - n) * 0.693147180559945309f;  // e^x = 2^n e^(f ln 2)
  float p = 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const float r = p * c10::bit_cast<float>(static_cast<int32_t>(n + 127.0f) << 23);
  return x != x ? x : (x < -87.0f ? 0.0f : r);
}

// out[j] = softmax_j(a . b[j * stride : j * stride + dim]) over j in [0, rows): with a = scale * q[b, h, 0] and the key
// rows b = k[b, h], the CLS query's attention probabilities. The row is normalized by itself rather than by the
// flash kernel's lse, so that the probabilities agree with the logits they come from even when |logits| is large.
SUPERVIT_CLONES void row_softmax_f32(const float* a, const float* b, int64_t rows, int64_t dim, int64_t stride,
                                     float* out) {
  float row_max = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < rows; ++j) {
    const float* bj = b + j * stride;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < dim; ++d) s += a[d] * bj[d];
    out[j] = s;
    row_max = std::max(row_max, s);
  }
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < rows; ++j) {
    out[j] = exp_f32(out[j] - row_max);
    total += out[j];
  }
  const float inv = 1.0f / total;
#pragma omp simd
  for (int64_t j = 0; j < rows; ++j) out[j] *= inv;
}

template <typename scalar_t, typename acc_t>
void row_softmax(const acc_t* a, const scalar_t* b, int64_t rows, int64_t dim, int64_t stride, acc_t* out) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    row_softmax_f32(a, b, rows, dim, stride, out);
  } else {
    acc_t row_max = -std::numeric_limits<acc_t>::infinity(), total = 0;
    for (int64_t j = 0; j < rows; ++j) {
      const scalar_t* bj = b + j * stride;
      acc_t s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < dim; ++d) s += a[d] * static_cast<acc_t>(bj[d]);
      out[j] = s;
      row_max = std::max(row_max, s);
    }
    for (int64_t j = 0; j < rows; ++j) total += (out[j] = std::exp(out[j] - row_max));
    for (int64_t j = 0; j < rows; ++j) out[j] /= total;
  }
}

// q, k, v may be strided views (e.g. of a fused qkv projection): the flash kernel and the score loops read them
// through their strides, so only a non-unit last-dim stride costs a copy.
Tensor unit_last_stride(const Tensor& t) { return t.stride(-1) == 1 || t.size(-1) == 1 ? t : t.contiguous(); }

std::tuple<Tensor, Tensor> flash_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  return at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, false, std::nullopt, scale);
}

// score [B, N-1] (fp32; fp64 for fp64) from q, k [B, H, N, D] (any strides, unit last-dim stride); parallel
// over the batch.
Tensor cls_score_cpu(const Tensor& q, const Tensor& k, double scale) {
  const int64_t batch = q.size(0), heads = q.size(1), tokens = q.size(2), dim = q.size(3);
  Tensor score = at::empty({batch, tokens - 1}, q.options().dtype(accumulation_type(q.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "ext_cls_score_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* kp = k.const_data_ptr<scalar_t>();
    const int64_t qb = q.stride(0), qh = q.stride(1), kb = k.stride(0), kh = k.stride(1), kn = k.stride(2);
    acc_t* sp = score.data_ptr<acc_t>();
    parallel_over(batch, heads * tokens * dim, [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> q0(dim), acc(tokens), prob(tokens);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t h = 0; h < heads; ++h) {
          const scalar_t* qrow = qp + b * qb + h * qh;  // q[b, h, 0]
          for (int64_t d = 0; d < dim; ++d) q0[d] = static_cast<acc_t>(qrow[d]) * static_cast<acc_t>(scale);
          row_softmax(q0.data(), kp + b * kb + h * kh, tokens, dim, kn, prob.data());  // [N] over all keys
          for (int64_t j = 1; j < tokens; ++j) acc[j] += prob[j];
        }
        for (int64_t j = 1; j < tokens; ++j) sp[b * (tokens - 1) + j - 1] = acc[j] / heads;
      }
    });
  });
  return score;
}

// dq[:, :, 0] and dk (contiguous, input dtype) += the CLS-score gradient terms, from q, k of any strides with a
// unit last-dim stride; parallel over (b, h).
void add_score_grad_cpu(const Tensor& grad_score, const Tensor& q, const Tensor& k, double scale, Tensor& dq,
                        Tensor& dk) {
  const int64_t batch = q.size(0), heads = q.size(1), tokens = q.size(2), dim = q.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "ext_score_grad_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const Tensor gs = grad_score.to(acc_dtype).contiguous();           // [B, N-1]
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* kp = k.const_data_ptr<scalar_t>();
    const int64_t qb = q.stride(0), qh = q.stride(1), kb_ = k.stride(0), kh = k.stride(1), kn = k.stride(2);
    const acc_t* gp = gs.const_data_ptr<acc_t>();
    scalar_t* dqp = dq.data_ptr<scalar_t>();
    scalar_t* dkp = dk.data_ptr<scalar_t>();
    const acc_t sc = static_cast<acc_t>(scale);
    parallel_over(batch * heads, 2 * tokens * dim, [&](int64_t i0, int64_t i1) {
      std::vector<acc_t> q0(dim), q0s(dim), p(tokens), dq0(dim);
      for (int64_t bh = i0; bh < i1; ++bh) {
        const int64_t b = bh / heads, h = bh % heads;
        const scalar_t* kb = kp + b * kb_ + h * kh;  // k[b, h]
        for (int64_t d = 0; d < dim; ++d) {
          q0[d] = static_cast<acc_t>(qp[b * qb + h * qh + d]);
          q0s[d] = q0[d] * sc;
        }
        acc_t row_dot = 0;
        row_softmax(q0s.data(), kb, tokens, dim, kn, p.data());  // P0[j], all keys
        for (int64_t j = 1; j < tokens; ++j) row_dot += p[j] * gp[b * (tokens - 1) + j - 1];
        row_dot /= heads;
        std::fill(dq0.begin(), dq0.end(), acc_t(0));
        for (int64_t j = 0; j < tokens; ++j) {
          const acc_t g = j > 0 ? gp[b * (tokens - 1) + j - 1] / heads : acc_t(0);
          const acc_t ds = p[j] * (g - row_dot) * sc;  // scale * dS0[j]
          const scalar_t* krow = kb + j * kn;
          scalar_t* dkrow = dkp + bh * tokens * dim + j * dim;
          for (int64_t d = 0; d < dim; ++d) {
            dq0[d] += ds * static_cast<acc_t>(krow[d]);
            dkrow[d] = static_cast<scalar_t>(static_cast<acc_t>(dkrow[d]) + ds * q0[d]);
          }
        }
        scalar_t* dqrow = dqp + bh * tokens * dim;
        for (int64_t d = 0; d < dim; ++d) dqrow[d] = static_cast<scalar_t>(static_cast<acc_t>(dqrow[d]) + dq0[d]);
      }
    });
  });
}

std::tuple<Tensor, Tensor, Tensor> attention_forward_cpu(
    const Tensor& q_, const Tensor& k_, const Tensor& v_, double scale, bool return_cls_score) {
  check_qkv(q_, k_, v_);
  const Tensor q = unit_last_stride(q_), k = unit_last_stride(k_), v = unit_last_stride(v_);
  auto [out, lse] = flash_forward(q, k, v, scale);  // out [B, H, N, D] token-major, lse [B, H, N] in the acc dtype
  Tensor score;
  if (return_cls_score) {
    TORCH_CHECK(q.size(2) >= 2, "return_cls_score needs N >= 2 tokens, got ", q.size(2));
    score = cls_score_cpu(q, k, scale);
  } else {
    score = at::empty({q.size(0), 0}, q.options().dtype(accumulation_type(q.scalar_type())));
  }
  return {token_major(out), score, lse.to(accumulation_type(q.scalar_type())).contiguous()};
}

std::tuple<Tensor, Tensor, Tensor> attention_backward_cpu(
    const Tensor& grad_out, const Tensor& grad_score, const Tensor& q_, const Tensor& k_, const Tensor& v_,
    const Tensor& out, const Tensor& lse, double scale, bool has_score_grad) {
  check_qkv(q_, k_, v_);
  const Tensor q = unit_last_stride(q_), k = unit_last_stride(k_), v = unit_last_stride(v_);
  const Tensor lse_used = lse.to(accumulation_type(q.scalar_type()));  // what the flash backward takes (a no-op for our own lse)
  auto [dq, dk, dv] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
      unit_last_stride(grad_out), q, k, v, unit_last_stride(out), lse_used, 0.0, false, std::nullopt, scale);
  dq = dq.contiguous();  // the CPU flash backward returns [B, N, H, D]-strided gradients
  dk = dk.contiguous();
  dv = dv.contiguous();
  if (has_score_grad) {
    check_grad_score(grad_score, q);
    add_score_grad_cpu(grad_score, q, k, scale, dq, dk);
  }
  return {dq, dk, dv};
}

}  // namespace
}  // namespace supervit

TORCH_LIBRARY_IMPL(supervit, CPU, m) {
  m.impl("ext_attention", &supervit::attention_forward_cpu);
  m.impl("ext_attention_backward", &supervit::attention_backward_cpu);
}
