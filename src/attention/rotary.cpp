// Rotary position embeddings (include/multihead/rotary.hpp): validate everything, then
// one pass over the (b, l) rows, each computing its cos/sin table once for all heads.
#include "multihead/rotary.hpp"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/view_checks.hpp"
#include "multihead/attention.hpp"  // get_num_threads
#include "multihead/error.hpp"

namespace multihead {

namespace {

using std::to_string;

constexpr int64_t kMaxPosition = int64_t(1) << 53;  // exactly representable in double

int64_t position_at(const TensorView& p, int64_t b, int64_t l) {
  const int64_t off = p.rank == 2 ? b * p.strides[0] + l * p.strides[1] : l * p.strides[0];
  if (p.dtype == DType::kI32) return static_cast<const int32_t*>(p.data)[off];
  return static_cast<const int64_t*>(p.data)[off];
}

float load(const TensorView& x, int64_t off) {
  if (x.dtype == DType::kBF16) return bf16_to_float(static_cast<const bf16*>(x.data)[off]);
  return static_cast<const float*>(x.data)[off];
}

void store(const TensorView& x, int64_t off, double value) {
  const float f = float(value);
  if (x.dtype == DType::kBF16)
    static_cast<bf16*>(x.data)[off] = float_to_bf16(f);
  else
    static_cast<float*>(x.data)[off] = f;
}

// out is x itself: same memory, dtype and strides over every dim with more than one element.
bool same_view(const TensorView& a, const TensorView& b) {
  if (a.data != b.data || a.dtype != b.dtype || a.rank != b.rank) return false;
  for (int d = 0; d < a.rank; ++d)
    if (a.shape[d] != b.shape[d] || (a.shape[d] > 1 && a.strides[d] != b.strides[d])) return false;
  return true;
}

}  // namespace

void apply_rotary(const TensorView& x, const TensorView& positions, const TensorView& out,
                  const RotaryOptions& options) {
  static constexpr const char* kLetters[] = {"B", "L", "H", "D"};
  static constexpr const char* kPerBatch[] = {"B", "L"};
  static constexpr const char* kShared[] = {"L"};
  const detail::NamedView nx{x, "x", kLetters}, nout{out, "out", kLetters};
  for (const detail::NamedView* t : {&nx, &nout}) {
    detail::check_view_layout(*t);
    detail::check_view_rank(*t, 4);
    detail::check_view_dtype(*t, {DType::kF32, DType::kBF16}, "float32 or bfloat16");
  }
  const int64_t B = x.shape[0], L = x.shape[1], H = x.shape[2], D = x.shape[3];
  for (int d = 0; d < 4; ++d) detail::check_view_dim(nout, d, x.shape[d], " (x's)");
  detail::check_view_no_self_overlap(nout);

  const bool per_batch = positions.rank == 2;
  const detail::NamedView np{positions, "positions",
                             per_batch ? std::span<const char* const>(kPerBatch) : std::span<const char* const>(kShared)};
  detail::check_view_layout(np);
  if (positions.rank != 1 && positions.rank != 2)
    throw Error(ErrorKind::kInvalidShape, "positions", "rank", "1 (L) or 2 (B, L)",
                to_string(positions.rank) + " " + positions.shape_string());
  detail::check_view_dtype(np, {DType::kI32, DType::kI64}, "int32 or int64");
  if (per_batch) {
    detail::check_view_dim(np, 0, B, " (x's B)");
    detail::check_view_dim(np, 1, L, " (x's L)");
  } else {
    detail::check_view_dim(np, 0, L, " (x's L)");
  }

  const int64_t R = options.rotary_dim;
  if (R <= 0 || R % 2 != 0 || R > D)
    throw Error(ErrorKind::kInvalidArgument, "options.rotary_dim", "",
                "even and in (0, D=" + to_string(D) + "]", to_string(R));
  if (!std::isfinite(options.base) || !(options.base > 0.0))
    throw Error(ErrorKind::kInvalidArgument, "options.base", "", "finite and > 0", std::to_string(options.base));

  const bool in_place = same_view(out, x);
  if (!in_place && detail::views_overlap(out, x))
    throw Error(ErrorKind::kInvalidArgument, "out", "memory", "x itself (in place) or no overlap with x",
                "overlapping memory");
  if (detail::views_overlap(out, positions))
    throw Error(ErrorKind::kInvalidArgument, "out", "memory", "no overlap with positions", "overlapping memory");

  const int64_t rows_b = per_batch ? B : 1;
  for (int64_t b = 0; b < rows_b; ++b)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t p = position_at(positions, b, l);
      if (p < 0 || p > kMaxPosition)
        throw Error(ErrorKind::kInvalidArgument, "positions",
                    per_batch ? "element (" + to_string(b) + ", " + to_string(l) + ")" : "element " + to_string(l),
                    ">= 0 and <= 2^53", to_string(p));
    }
  if (x.numel() == 0) return;

  // Every check passed; from here on nothing throws.
  const int64_t half = R / 2;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = std::pow(options.base, -double(2 * i) / double(R));
  const int64_t rows = B * L;
  const bool parallel = x.numel() >= (int64_t(1) << 16);
  const int threads = get_num_threads();
#pragma omp parallel num_threads(threads) if (parallel)
  {
    std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / L, l = r % L;
      const double pos = double(position_at(positions, b, l));
      for (int64_t i = 0; i < half; ++i) {
        const double theta = pos * inv_freq[size_t(i)];
        c[size_t(i)] = float(std::cos(theta));
        s[size_t(i)] = float(std::sin(theta));
      }
      for (int64_t h = 0; h < H; ++h) {
        const int64_t xo = b * x.strides[0] + l * x.strides[1] + h * x.strides[2];
        const int64_t oo = b * out.strides[0] + l * out.strides[1] + h * out.strides[2];
        for (int64_t i = 0; i < half; ++i) {
          const int64_t i1 = options.interleaved ? 2 * i : i;
          const int64_t i2 = options.interleaved ? 2 * i + 1 : i + half;
          const double a = load(x, xo + i1), bb = load(x, xo + i2);
          const double ci = c[size_t(i)], si = s[size_t(i)];
          store(out, oo + i1, a * ci - bb * si);
          store(out, oo + i2, bb * ci + a * si);
        }
        if (!in_place)
          for (int64_t d = R; d < D; ++d) store(out, oo + d, load(x, xo + d));
      }
    }
  }
}

}  // namespace multihead
