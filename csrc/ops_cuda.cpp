// CUDA registrations: token ops on the kernels of cuda_kernels.cu; attention on ATen's memory-efficient SDPA
// (out + logsumexp) plus the CLS-score kernel. The cases these kernels do not take (see cuda_kernels.h) are
// refused here and sent to the reference backend by the dispatcher (ext_backend.supports).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_kernels.h"
#include "ext.h"

namespace supervit {
namespace {

void check_sortable(const Tensor& score) {
  TORCH_CHECK(cuda::is_kernel_dtype(score.scalar_type()), "ext top-k on CUDA takes fp32/fp16/bf16 scores, got ",
              score.scalar_type());
  TORCH_CHECK(score.size(1) <= cuda::kMaxSortTokens, "ext top-k on CUDA takes at most ", cuda::kMaxSortTokens,
              " patch tokens, got ", score.size(1));
}

Tensor keep_topk_cuda(const Tensor& score_, int64_t k) {
  check_score(score_, k);
  c10::cuda::CUDAGuard guard(score_.device());
  check_sortable(score_);
  const Tensor score = score_.contiguous();
  Tensor idx = at::empty({score.size(0), k}, score.options().dtype(at::kLong));
  Tensor none;
  cuda::topk(score, k, idx, none, none);
  return idx;
}

Tensor gather_tokens_cuda(const Tensor& x_, const Tensor& idx_) {
  check_tokens(x_, "x");
  check_index(idx_, x_, x_.size(1) - 1);
  c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), idx = idx_.to(at::kLong).contiguous();
  Tensor out = at::empty({x.size(0), idx.size(1) + 1, x.size(2)}, x.options());
  cuda::gather(x, idx, out);
  return out;
}

Tensor gather_tokens_backward_cuda(const Tensor& grad_, const Tensor& idx_, int64_t num_tokens) {
  check_gather_backward(grad_, idx_, num_tokens);
  c10::cuda::CUDAGuard guard(grad_.device());
  const Tensor grad = grad_.contiguous(), idx = idx_.to(at::kLong).contiguous();
  Tensor out = at::zeros({grad.size(0), num_tokens, grad.size(2)}, grad.options());
  cuda::scatter(grad, idx, out);
  return out;
}

std::tuple<Tensor, Tensor> prune_tokens_cuda(const Tensor& x_, const Tensor& score_, int64_t k) {
  check_prune(x_, score_, k);
  c10::cuda::CUDAGuard guard(x_.device());
  check_sortable(score_);
  const Tensor x = x_.contiguous(), score = score_.contiguous();
  Tensor out = at::empty({x.size(0), k + 1, x.size(2)}, x.options());
  Tensor idx = at::empty({x.size(0), k}, score.options().dtype(at::kLong));
  cuda::topk(score, k, idx, x, out);  // one launch: sort + gather
  return {out, idx};
}

void check_sdpa_case(const Tensor& q) {
  TORCH_CHECK(cuda::is_kernel_dtype(q.scalar_type()), "ext attention on CUDA takes fp32/fp16/bf16, got ",
              q.scalar_type());
  TORCH_CHECK(q.size(3) % cuda::kHeadDimMultiple == 0 && q.size(3) <= cuda::kMaxHeadDim,
              "ext attention on CUDA takes head dims that are multiples of ", cuda::kHeadDimMultiple, " up to ",
              cuda::kMaxHeadDim, ", got ", q.size(3));
  TORCH_CHECK(q.numel() > 0, "ext attention on CUDA takes non-empty q, k, v");
}

std::tuple<Tensor, Tensor, Tensor> attention_forward_cuda(
    const Tensor& q_, const Tensor& k_, const Tensor& v_, double scale, bool return_cls_score) {
  check_qkv(q_, k_, v_);
  c10::cuda::CUDAGuard guard(q_.device());
  check_sdpa_case(q_);
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const int64_t tokens = q.size(2);
  auto res = at::_scaled_dot_product_efficient_attention(q, k, v, std::nullopt, /*compute_log_sumexp=*/true,
                                                         0.0, false, scale);
  Tensor out = token_major(std::get<0>(res));                                  // [B, H, N, D] token-major
  Tensor lse = std::get<1>(res).narrow(2, 0, tokens).to(at::kFloat).contiguous();  // padded to 32 -> [B, H, N]
  Tensor score;
  if (return_cls_score) {
    TORCH_CHECK(tokens >= 2, "return_cls_score needs N >= 2 tokens, got ", tokens);
    score = at::empty({q.size(0), tokens - 1}, q.options().dtype(at::kFloat));  // fp32/fp16/bf16 here
    const Tensor lse0 = lse.select(2, 0).contiguous();  // [B, H]
    cuda::cls_score(q, k, lse0, scale, score);
  } else {
    score = at::empty({q.size(0), 0}, q.options().dtype(at::kFloat));
  }
  return {out, score, lse};
}

std::tuple<Tensor, Tensor, Tensor> attention_backward_cuda(
    const Tensor& grad_out, const Tensor& grad_score, const Tensor& q_, const Tensor& k_, const Tensor& v_,
    const Tensor& out, const Tensor& lse, double scale, bool has_score_grad) {
  check_qkv(q_, k_, v_);
  c10::cuda::CUDAGuard guard(q_.device());
  check_sdpa_case(q_);
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const int64_t tokens = q.size(2);
  // The kernel works in [B, N, H, D]: q/k/v need only a contiguous last dim, but `out` must be laid out as
  // [B, N, H, D] (its row stride is derived, not read), and lse is padded to a multiple of 32 queries as the
  // forward returns it. num_splits_key = 1 keeps the dK/dV accumulation deterministic.
  const Tensor out_t = out.transpose(1, 2).contiguous();
  const int64_t padded = (tokens + 31) / 32 * 32;
  const Tensor lse_p =
      at::constant_pad_nd(lse.to(at::kFloat), {0, padded - tokens}, std::numeric_limits<double>::infinity())
          .contiguous();
  auto grads = at::_efficient_attention_backward(
      grad_out.transpose(1, 2), q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), std::nullopt, out_t,
      std::nullopt, std::nullopt, tokens, tokens, lse_p, 0.0, Tensor(), Tensor(), /*custom_mask_type=*/0,
      /*bias_requires_grad=*/false, scale, /*num_splits_key=*/1);
  Tensor dq = std::get<0>(grads).transpose(1, 2).contiguous();
  Tensor dk = std::get<1>(grads).transpose(1, 2).contiguous();
  Tensor dv = std::get<2>(grads).transpose(1, 2).contiguous();
  if (has_score_grad) {
    check_grad_score(grad_score, q);
    add_score_grad(grad_score, q, k, lse, scale, dq, dk);
  }
  return {dq, dk, dv};
}

}  // namespace
}  // namespace supervit

TORCH_LIBRARY_IMPL(supervit, CUDA, m) {
  m.impl("ext_attention", &supervit::attention_forward_cuda);
  m.impl("ext_attention_backward", &supervit::attention_backward_cuda);
  m.impl("ext_keep_topk", &supervit::keep_topk_cuda);
  m.impl("ext_gather_tokens", &supervit::gather_tokens_cuda);
  m.impl("ext_gather_tokens_backward", &supervit::gather_tokens_backward_cuda);
  m.impl("ext_prune_tokens", &supervit::prune_tokens_cuda);
}
