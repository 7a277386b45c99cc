// Checks of a TensorView's layout and shape for entry points outside the attention
// validator (the KV cache, rotary embeddings), with messages in its style:
// "InvalidShape: k dim 2 (D): expected 64, got 32".
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "multihead/error.hpp"
#include "multihead/tensor.hpp"

namespace multihead::detail {

// A tensor, its name in messages and the letters of its dims (static arrays: building
// and checking a NamedView allocates nothing unless a check fails).
struct NamedView {
  const TensorView& view;
  const char* name;
  std::span<const char* const> letters;

  std::string dim_label(int d) const {
    return "dim " + std::to_string(d) +
           (d < int(letters.size()) ? std::string(" (") + letters[size_t(d)] + ")" : std::string());
  }
  std::string layout_string() const {
    std::string s = "(";
    for (size_t i = 0; i < letters.size(); ++i) s += (i ? ", " : "") + std::string(letters[i]);
    return s + ")";
  }
};

// Rank in [0, 4], sizes >= 0, strides >= 0, a contiguous last dim, a representable
// byte extent and a non-null pointer when there are elements.
inline void check_view_layout(const NamedView& t) {
  const TensorView& v = t.view;
  if (v.rank < 0 || v.rank > kMaxRank)
    throw Error(ErrorKind::kInvalidShape, t.name, "rank", "0..4", std::to_string(v.rank));
  for (int d = 0; d < v.rank; ++d) {
    if (v.shape[d] < 0)
      throw Error(ErrorKind::kInvalidShape, t.name, t.dim_label(d), ">= 0", std::to_string(v.shape[d]));
    if (v.strides[d] < 0)
      throw Error(ErrorKind::kInvalidArgument, t.name, "stride of dim " + std::to_string(d), ">= 0",
                  std::to_string(v.strides[d]));
  }
  if (v.rank > 0 && v.shape[v.rank - 1] > 1 && v.strides[v.rank - 1] != 1)
    throw Error(ErrorKind::kInvalidArgument, t.name, "stride of last dim", "1 (contiguous last dimension)",
                std::to_string(v.strides[v.rank - 1]));
  int64_t extent = 0;
  for (int d = 0; d < v.rank; ++d) {
    if (v.shape[d] == 0) return;  // no elements: nothing is read or written
    int64_t span;
    if (__builtin_mul_overflow(v.shape[d] - 1, v.strides[d], &span) ||
        __builtin_add_overflow(extent, span, &extent))
      throw Error(ErrorKind::kCapacityExceeded, t.name, "extent", "< 2^63 elements", "overflow");
  }
  int64_t bytes;
  if (__builtin_mul_overflow(extent + 1, int64_t(dtype_size(v.dtype)), &bytes))
    throw Error(ErrorKind::kCapacityExceeded, t.name, "extent", "< 2^63 bytes", "overflow");
  if (v.data == nullptr)
    throw Error(ErrorKind::kInvalidArgument, t.name, "data", "a non-null pointer", "null");
}

inline void check_view_rank(const NamedView& t, int rank) {
  if (t.view.rank != rank)
    throw Error(ErrorKind::kInvalidShape, t.name, "rank", std::to_string(rank) + " " + t.layout_string(),
                std::to_string(t.view.rank) + " " + t.view.shape_string());
}

inline void check_view_dim(const NamedView& t, int d, int64_t expected, const char* why = "") {
  if (t.view.shape[d] != expected)
    throw Error(ErrorKind::kInvalidShape, t.name, t.dim_label(d), std::to_string(expected) + why,
                std::to_string(t.view.shape[d]));
}

inline void check_view_dtype(const NamedView& t, std::initializer_list<DType> allowed, const char* expected) {
  for (DType d : allowed)
    if (t.view.dtype == d) return;
  throw Error(ErrorKind::kInvalidArgument, t.name, "dtype", expected, to_string(t.view.dtype));
}

// [first byte, last byte] of a view with elements; false when it has none.
inline bool view_byte_range(const TensorView& v, uintptr_t* lo, uintptr_t* hi) {
  if (v.numel() == 0) return false;
  int64_t last = 0;
  for (int d = 0; d < v.rank; ++d) last += (v.shape[d] - 1) * v.strides[d];
  *lo = reinterpret_cast<uintptr_t>(v.data);
  *hi = *lo + uintptr_t((last + 1) * int64_t(dtype_size(v.dtype))) - 1;
  return true;
}

inline bool views_overlap(const TensorView& a, const TensorView& b) {
  uintptr_t alo, ahi, blo, bhi;
  if (!view_byte_range(a, &alo, &ahi) || !view_byte_range(b, &blo, &bhi)) return false;
  return alo <= bhi && blo <= ahi;
}

// An output must not write one element twice (sorted strides each step over the
// block of the dims below them).
inline void check_view_no_self_overlap(const NamedView& t) {
  if (t.view.numel() == 0) return;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int d = 0; d < t.view.rank; ++d)
    if (t.view.shape[d] > 1) dims.push_back({t.view.strides[d], t.view.shape[d]});
  std::sort(dims.begin(), dims.end());
  int64_t covered = 1;
  for (auto [stride, size] : dims) {
    if (stride < covered)
      throw Error(ErrorKind::kInvalidArgument, t.name, "strides", "non-overlapping elements (an output)",
                  "overlapping strides");
    covered = stride * size;
  }
}

}  // namespace multihead::detail
