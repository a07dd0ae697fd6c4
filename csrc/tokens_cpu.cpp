// CPU token ops: top-k keep, gather of [CLS] + kept tokens, its backward (indexed store), and the fused prune.
// Every op is parallel over the batch when the work is large enough (parallel_over, ext.h); row copies are memcpy,
// so the gathers are dtype-agnostic and bit-exact.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ext.h"

namespace supervit {
namespace {

// Order-preserving unsigned key of a float: larger value -> larger key; -0 == +0; every NaN above +inf
// (torch.sort's descending order puts NaN first).
template <typename acc_t>
inline uint64_t ordered_key(acc_t value) {
  if (std::isnan(value)) return ~uint64_t(0);
  if (value == acc_t(0)) value = acc_t(0);  // -0 -> +0
  if constexpr (sizeof(acc_t) == 8) {
    const uint64_t u = c10::bit_cast<uint64_t>(value);
    return (u >> 63) ? ~u : (u | (uint64_t(1) << 63));
  } else {
    const uint32_t u = c10::bit_cast<uint32_t>(value);
    return (u >> 31) ? uint64_t(~u) : uint64_t(u | (uint32_t(1) << 31));
  }
}

struct Entry {
  uint64_t key;
  int64_t index;
};

// Highest score first; the lower index first on ties.
inline bool before(const Entry& a, const Entry& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

template <typename scalar_t>
void topk_row(const scalar_t* row, int64_t num, int64_t k, int64_t* out, std::vector<Entry>& buf) {
  using acc_t = at::opmath_type<scalar_t>;  // float, or double for double scores
  buf.resize(num);
  for (int64_t i = 0; i < num; ++i) buf[i] = {ordered_key<acc_t>(static_cast<acc_t>(row[i])), i};
  if (k < num) {
    std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), before);  // buf[k-1] is the k-th best
    std::sort(buf.begin(), buf.begin() + k, before);
  } else {
    std::sort(buf.begin(), buf.end(), before);
  }
  for (int64_t i = 0; i < k; ++i) out[i] = buf[i].index;
}

template <typename index_t>
inline int64_t patch_index(const index_t* idx, int64_t i, int64_t num_patch) {
  const int64_t j = static_cast<int64_t>(idx[i]);
  TORCH_CHECK(j >= 0 && j < num_patch, "idx values must be in [0, ", num_patch - 1, "], got ", j);
  return j;
}

// out[b] = [x[b, 0], x[b, 1 + idx[b, 0]], ...] for b in [b0, b1); rows are `row_bytes` wide.
template <typename index_t>
void gather_rows(const char* x, const index_t* idx, char* out, int64_t b0, int64_t b1, int64_t tokens, int64_t k,
                 int64_t row_bytes) {
  for (int64_t b = b0; b < b1; ++b) {
    const char* xb = x + b * tokens * row_bytes;
    char* ob = out + b * (k + 1) * row_bytes;
    std::memcpy(ob, xb, row_bytes);
    for (int64_t i = 0; i < k; ++i) {
      const int64_t j = patch_index(idx + b * k, i, tokens - 1);
      std::memcpy(ob + (i + 1) * row_bytes, xb + (1 + j) * row_bytes, row_bytes);
    }
  }
}

Tensor keep_topk_cpu(const Tensor& score_, int64_t k) {
  check_score(score_, k);
  const Tensor score = score_.contiguous();
  const int64_t batch = score.size(0), num = score.size(1);
  Tensor idx = at::empty({batch, k}, score.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "ext_keep_topk_cpu", [&] {
    const scalar_t* sp = score.const_data_ptr<scalar_t>();
    int64_t* ip = idx.data_ptr<int64_t>();
    parallel_over(batch, num * 16, [&](int64_t b0, int64_t b1) {
      std::vector<Entry> buf;
      for (int64_t b = b0; b < b1; ++b) topk_row(sp + b * num, num, k, ip + b * k, buf);
    });
  });
  return idx;
}

Tensor gather_tokens_cpu(const Tensor& x_, const Tensor& idx_) {
  check_tokens(x_, "x");
  check_index(idx_, x_, x_.size(1) - 1);
  const Tensor x = x_.contiguous(), idx = idx_.contiguous();
  const int64_t batch = x.size(0), tokens = x.size(1), k = idx.size(1);
  const int64_t row_bytes = x.size(2) * x.element_size();
  Tensor out = at::empty({batch, k + 1, x.size(2)}, x.options());
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "ext_gather_tokens_cpu", [&] {
    const index_t* ip = idx.const_data_ptr<index_t>();
    parallel_over(batch, (k + 1) * x.size(2), [&](int64_t b0, int64_t b1) {
      gather_rows(xp, ip, op, b0, b1, tokens, k, row_bytes);
    });
  });
  return out;
}

Tensor gather_tokens_backward_cpu(const Tensor& grad_kept_, const Tensor& idx_, int64_t num_tokens) {
  check_gather_backward(grad_kept_, idx_, num_tokens);
  const Tensor grad = grad_kept_.contiguous(), idx = idx_.contiguous();
  const int64_t batch = grad.size(0), k = idx.size(1);
  const int64_t row_bytes = grad.size(2) * grad.element_size();
  Tensor out = at::empty({batch, num_tokens, grad.size(2)}, grad.options());
  const char* gp = static_cast<const char*>(grad.const_data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "ext_gather_tokens_backward_cpu", [&] {
    const index_t* ip = idx.const_data_ptr<index_t>();
    parallel_over(batch, num_tokens * grad.size(2), [&](int64_t b0, int64_t b1) {
      std::vector<char> kept(num_tokens);
      for (int64_t b = b0; b < b1; ++b) {
        char* ob = op + b * num_tokens * row_bytes;
        const char* gb = gp + b * (k + 1) * row_bytes;
        std::fill(kept.begin(), kept.end(), 0);
        kept[0] = 1;
        for (int64_t i = 0; i < k; ++i) kept[1 + patch_index(ip + b * k, i, num_tokens - 1)] = 1;
        for (int64_t t = 0; t < num_tokens; ++t) {
          if (!kept[t]) std::memset(ob + t * row_bytes, 0, row_bytes);
        }
        std::memcpy(ob, gb, row_bytes);
        for (int64_t i = 0; i < k; ++i) {  // plain indexed store, in order: deterministic
          std::memcpy(ob + (1 + ip[b * k + i]) * row_bytes, gb + (i + 1) * row_bytes, row_bytes);
        }
      }
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> prune_tokens_cpu(const Tensor& x_, const Tensor& score_, int64_t k) {
  check_prune(x_, score_, k);
  const Tensor x = x_.contiguous(), score = score_.contiguous();
  const int64_t batch = x.size(0), tokens = x.size(1);
  const int64_t row_bytes = x.size(2) * x.element_size();
  Tensor out = at::empty({batch, k + 1, x.size(2)}, x.options());
  Tensor idx = at::empty({batch, k}, score.options().dtype(at::kLong));
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  int64_t* ip = idx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, score.scalar_type(), "ext_prune_tokens_cpu", [&] {
    const scalar_t* sp = score.const_data_ptr<scalar_t>();
    parallel_over(batch, (k + 1) * x.size(2), [&](int64_t b0, int64_t b1) {
      std::vector<Entry> buf;
      for (int64_t b = b0; b < b1; ++b) {
        topk_row(sp + b * (tokens - 1), tokens - 1, k, ip + b * k, buf);
        gather_rows(xp, ip, op, b, b + 1, tokens, k, row_bytes);
      }
    });
  });
  return {out, idx};
}

}  // namespace
}  // namespace supervit

TORCH_LIBRARY_IMPL(supervit, CPU, m) {
  m.impl("ext_keep_topk", &supervit::keep_topk_cpu);
  m.impl("ext_gather_tokens", &supervit::gather_tokens_cpu);
  m.impl("ext_gather_tokens_backward", &supervit::gather_tokens_backward_cpu);
  m.impl("ext_prune_tokens", &supervit::prune_tokens_cpu);
}
