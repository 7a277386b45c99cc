// Per-target tile primitives of the SIMD kernels (re-included once per Highway target).
//
// Layout: the rows of a work item (the group's query heads x a block of queries) run
// along vectors. Scores are kept transposed, Sᵀ (kTileK keys x rows_pad), and the output
// accumulator too, Oᵀ (dv_pad x rows_pad). Both products are then one micro-kernel:
//   out[a, r..r+2N) (+)= Σ_x scalar(x, a) · vec[x, r..r+2N)
// with a scalar broadcast per (x, a) and two vector loads per x:
//   Sᵀ = K Qᵀ :  x = d over D,  scalar = K[key a, d],  vec = Qᵀ[d, rows]
//   Oᵀ += Vᵀ Pᵀ: x = key c,     scalar = V[c, dim a],  vec = Pᵀ[c, rows]
// and the online softmax runs down the key axis on whole row vectors, with no
// horizontal reductions.
#if defined(MULTIHEAD_SIMD_TILES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_SIMD_TILES_INL_H_
#undef MULTIHEAD_SIMD_TILES_INL_H_
#else
#define MULTIHEAD_SIMD_TILES_INL_H_
#endif

#include <cstring>
#include <limits>
#include <type_traits>

#include <hwy/highway.h>

#include <hwy/contrib/math/math-inl.h>

#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/cpu/lane_sum.hpp"
#include "kernels/cpu/tile_ops.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using FloatTag = hn::ScalableTag<float>;

// Broadcast operands per micro-kernel call: 2·kBroadcasts accumulators live in registers
// (16 of AVX-512's 32, 8 of AVX2's 16).
inline constexpr int64_t kBroadcasts = HWY_MAX_BYTES >= 64 ? 8 : 4;

inline int64_t row_vector() { return int64_t(hn::Lanes(FloatTag())); }

// e^x for the softmax, where x = s - max <= 0 (or a little above, from rounding), within
// 1 ulp (tests/kernels/softmax_exp_test.cpp): 0 at -inf, NaN stays NaN. On AVX-512:
// x = n·ln2 + r with |r| <= ln2/2 (ln2 in two parts), e^r by Highway's degree-7
// polynomial, then vscalefps for 2^n, which also rounds results below FLT_MIN to
// subnormals or 0: 13 instructions where hn::Exp takes ~25. Elsewhere hn::Exp.
HWY_INLINE hn::Vec<FloatTag> softmax_exp(hn::Vec<FloatTag> x) {
  const FloatTag d;
#if HWY_TARGET <= HWY_AVX3
  // max(-150, x): -inf and anything below -104 give exactly 0; NaN (the second operand) stays.
  x = hn::Vec<FloatTag>{_mm512_max_ps(_mm512_set1_ps(-150.0f), x.raw)};
  const auto n = hn::Round(hn::Mul(x, hn::Set(d, 1.44269504088896341f)));
  auto r = hn::MulAdd(n, hn::Set(d, -0.693145751953125f), x);
  r = hn::MulAdd(n, hn::Set(d, -1.428606765330187045e-6f), r);
  auto q = hn::Set(d, 0.000198527617612853646278381f);
  q = hn::MulAdd(q, r, hn::Set(d, 0.00139304355252534151077271f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.00833336077630519866943359f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.0416664853692054748535156f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.166666671633720397949219f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.5f));
  const auto e_r = hn::Add(hn::MulAdd(q, hn::Mul(r, r), r), hn::Set(d, 1.0f));
  return hn::Vec<FloatTag>{_mm512_scalef_ps(e_r.raw, n.raw)};
#else
  const auto e = hn::IfThenElseZero(hn::Ne(x, hn::Set(d, -std::numeric_limits<float>::infinity())), hn::Exp(d, x));
  return hn::IfThenElse(hn::IsNaN(x), x, e);  // hn::Exp gives 0 for NaN
#endif
}

// Sizes of one item's tiles.
struct TileShape {
  int64_t rows = 0;      // group · rows per item
  int64_t rows_pad = 0;  // rounded up to 2 vectors
  int64_t d_vec = 0;     // D rounded up to 2 vectors (D along vectors: dQ, dK)
  int64_t dv_vec = 0;    // Dv rounded up to 2 vectors (Dv along vectors: dV)
};

inline TileShape tile_shape(const AttentionParams& p) {
  TileShape t;
  t.rows = p.group * p.group_rows;
  t.rows_pad = round_up(t.rows, 2 * row_vector());
  t.d_vec = round_up(p.D, 2 * row_vector());
  t.dv_vec = round_up(p.Dv, 2 * row_vector());
  return t;
}

// Hands out blocks of a thread's scratch, each on a 64-byte boundary; with no buffer it
// only counts (the size the caller must provide).
struct ScratchCarver {
  float* base = nullptr;
  int64_t used = 0;
  float* operator()(int64_t floats) {
    float* block = base ? base + used : nullptr;
    used += round_up(floats, 16);
    return block;
  }
};

// out[a, :W vectors) (+)= Σ_x sc[a·sa + x·sx] · vec[x·vstride + :W vectors) for A values of a.
template <int A, int W>
HWY_INLINE void outer_micro(const float* HWY_RESTRICT vec, int64_t vstride, const float* HWY_RESTRICT sc,
                            int64_t sa, int64_t sx, int64_t X, float* HWY_RESTRICT out, int64_t out_stride,
                            bool accumulate) {
  const FloatTag d;
  const size_t N = hn::Lanes(d);
  using V = hn::Vec<FloatTag>;
  V acc[A][W];
  for (int a = 0; a < A; ++a)
    for (int w = 0; w < W; ++w) acc[a][w] = accumulate ? hn::Load(d, out + a * out_stride + w * N) : hn::Zero(d);
  for (int64_t x = 0; x < X; ++x) {
    V v[W];
    for (int w = 0; w < W; ++w) v[w] = hn::LoadU(d, vec + x * vstride + w * N);  // may be a caller's row (decode)
    const float* s = sc + x * sx;
    for (int a = 0; a < A; ++a) {
      const V b = hn::Set(d, s[a * sa]);
      for (int w = 0; w < W; ++w) acc[a][w] = hn::MulAdd(b, v[w], acc[a][w]);
    }
  }
  for (int a = 0; a < A; ++a)
    for (int w = 0; w < W; ++w) hn::Store(acc[a][w], d, out + a * out_stride + w * N);
}

// One strip of W vectors of out: count values of a in blocks of A, then the rest.
template <int A, int W>
HWY_INLINE void outer_strip(const float* HWY_RESTRICT vec, int64_t vstride, const float* HWY_RESTRICT sc,
                            int64_t sa, int64_t sx, int64_t X, int64_t count, int64_t width, float* HWY_RESTRICT out,
                            bool accumulate) {
  const int64_t full = count / A * A;
  for (int64_t a0 = 0; a0 < full; a0 += A)
    outer_micro<A, W>(vec, vstride, sc + a0 * sa, sa, sx, X, out + a0 * width, width, accumulate);
  const float* sc_tail = sc + full * sa;
  float* out_tail = out + full * width;
  const auto tail = [&](auto rest) {
    outer_micro<decltype(rest)::value, W>(vec, vstride, sc_tail, sa, sx, X, out_tail, width, accumulate);
  };
  switch (count - full) {  // the last count % A values of a
    case 0: break;
    case 1: tail(std::integral_constant<int, 1>{}); break;
    case 2: tail(std::integral_constant<int, 2>{}); break;
    case 3: tail(std::integral_constant<int, 3>{}); break;
    case 4: if constexpr (A > 4) tail(std::integral_constant<int, 4>{}); break;
    case 5: if constexpr (A > 5) tail(std::integral_constant<int, 5>{}); break;
    case 6: if constexpr (A > 6) tail(std::integral_constant<int, 6>{}); break;
    default: if constexpr (A > 7) tail(std::integral_constant<int, 7>{}); break;
  }
}

// out (count x width) (+)= Σ_x sc(x, a) · vec[x, :] for a in [0, count); width (the vector
// axis, also out's row stride) is a multiple of 2 vectors.
HWY_INLINE void outer_product(const float* HWY_RESTRICT vec, int64_t vstride, const float* HWY_RESTRICT sc,
                              int64_t sa, int64_t sx, int64_t X, int64_t count, int64_t width,
                              float* HWY_RESTRICT out, bool accumulate) {
  const int64_t N = row_vector();
  int64_t r0 = 0;
#if HWY_TARGET <= HWY_AVX3
  // 4 vectors x 6 values: 24 accumulators and 10 loads per 24 FMAs (2 x 8: 10 per 16);
  // S2 4% faster. The sums run over x in the same order either way.
  for (; r0 + 4 * N <= width; r0 += 4 * N)
    outer_strip<6, 4>(vec + r0, vstride, sc, sa, sx, X, count, width, out + r0, accumulate);
#endif
  for (; r0 < width; r0 += 2 * N)
    outer_strip<kBroadcasts, 2>(vec + r0, vstride, sc, sa, sx, X, count, width, out + r0, accumulate);
}

// dst[0, n) = a row of any float dtype as f32, converting whole vectors at a time.
inline void load_row_simd(const void* base, DType dtype, int64_t offset, int64_t n, float* HWY_RESTRICT dst) {
  const FloatTag d;
  const int64_t N = row_vector();
  int64_t i = 0;
  if (dtype == DType::kF32) {
    std::copy_n(static_cast<const float*>(base) + offset, n, dst);
    return;
  }
  if (dtype == DType::kBF16) {
    const hn::Rebind<hwy::bfloat16_t, FloatTag> dh;
    const auto* src = reinterpret_cast<const hwy::bfloat16_t*>(static_cast<const bf16*>(base) + offset);
    for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(d, hn::LoadU(dh, src + i)), d, dst + i);
  } else if (dtype == DType::kF16) {
    const hn::Rebind<hwy::float16_t, FloatTag> dh;
    const auto* src = reinterpret_cast<const hwy::float16_t*>(static_cast<const f16*>(base) + offset);
    for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(d, hn::LoadU(dh, src + i)), d, dst + i);
  }
  for (; i < n; ++i) dst[i] = load_float(base, dtype, offset + i);
}

// The rows of an item: row r = (query head hkv·group + r / n, query i0 + r % n) of a
// (B, Lq, H, dim) activation (q, dout, out).
inline int64_t item_row_offset(const Activation& a, const AttentionParams& p, const SequenceSpan& s, int64_t hkv,
                               int64_t i0, int64_t n, int64_t r) {
  const int64_t h = hkv * p.group + r / n, i = i0 + r % n;
  return s.batch * a.stride_b + (s.q_begin + i) * a.stride_l + h * a.stride_h;
}

#if HWY_TARGET <= HWY_AVX3
// Transposes 16 vectors of 16 in registers: v[c][r] = old v[r][c] (64 shuffles). Scalar
// stores read back as vectors stall store-to-load forwarding, so the tiles that change
// layout (Qᵀ in, Oᵀ out) go through here.
HWY_INLINE void transpose16(__m512* v) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    v[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    v[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    v[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    v[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(v[8 * i + j], v[8 * i + 4 + j], _MM_SHUFFLE(2, 0, 2, 0));
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(v[8 * i + j], v[8 * i + 4 + j], _MM_SHUFFLE(3, 1, 3, 1));
    }
  for (int j = 0; j < 8; ++j) {
    v[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], _MM_SHUFFLE(2, 0, 2, 0));
    v[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], _MM_SHUFFLE(3, 1, 3, 1));
  }
}
#endif

// dst[c·dst_stride + a] = src[a·src_stride + c] for 16 columns c and dims a in [0, dims).
inline void transpose_columns16(const float* HWY_RESTRICT src, int64_t src_stride, int64_t dims,
                                float* HWY_RESTRICT dst, int64_t dst_stride) {
  int64_t a = 0;
#if HWY_TARGET <= HWY_AVX3
  for (; a + 16 <= dims; a += 16) {
    __m512 v[16];
    for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_ps(src + (a + i) * src_stride);
    transpose16(v);
    for (int c = 0; c < 16; ++c) _mm512_storeu_ps(dst + c * dst_stride + a, v[c]);
  }
#endif
  for (; a < dims; ++a)
    for (int64_t c = 0; c < 16; ++c) dst[c * dst_stride + a] = src[a * src_stride + c];
}

// Transposed: out (dim x rows_pad) times mul; padded rows are zero.
inline void pack_item_rows_t(const Activation& a, int64_t dim, float mul, const AttentionParams& p,
                             const SequenceSpan& s, int64_t hkv, int64_t i0, int64_t n, const TileShape& t,
                             float* row, float* out) {
  const int64_t rows = p.group * n;
  int64_t r = 0;
#if HWY_TARGET <= HWY_AVX3
  if (a.dtype == DType::kF32) {  // 16 rows at a time, whole blocks of 16 dims in registers
    const __m512 scale = _mm512_set1_ps(mul);
    for (; r < t.rows_pad; r += 16) {
      const float* src[16];
      for (int i = 0; i < 16; ++i)
        src[i] = r + i < rows ? static_cast<const float*>(a.data) + item_row_offset(a, p, s, hkv, i0, n, r + i)
                              : nullptr;
      int64_t x = 0;
      for (; x + 16 <= dim; x += 16) {
        __m512 v[16];
        for (int i = 0; i < 16; ++i) v[i] = src[i] ? _mm512_loadu_ps(src[i] + x) : _mm512_setzero_ps();
        transpose16(v);
        for (int c = 0; c < 16; ++c) _mm512_store_ps(out + (x + c) * t.rows_pad + r, _mm512_mul_ps(v[c], scale));
      }
      for (; x < dim; ++x)
        for (int i = 0; i < 16; ++i) out[x * t.rows_pad + r + i] = src[i] ? src[i][x] * mul : 0.0f;
    }
    return;
  }
#endif
  std::fill_n(out, dim * t.rows_pad, 0.0f);
  for (; r < rows; ++r) {
    load_row_simd(a.data, a.dtype, item_row_offset(a, p, s, hkv, i0, n, r), dim, row);
    for (int64_t d = 0; d < dim; ++d) out[d * t.rows_pad + r] = row[d] * mul;
  }
}

// Row-major: out (rows_out x stride), zero-padded.
inline void pack_item_rows(const Activation& a, int64_t dim, int64_t stride, const AttentionParams& p,
                           const SequenceSpan& s, int64_t hkv, int64_t i0, int64_t n, int64_t rows_out,
                           float* out) {
  std::fill_n(out, rows_out * stride, 0.0f);
  for (int64_t r = 0; r < p.group * n; ++r)
    load_row_simd(a.data, a.dtype, item_row_offset(a, p, s, hkv, i0, n, r), dim, out + r * stride);
}

// Qᵀ (D x rows_pad), times scale.
inline void pack_queries_t(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t i0, int64_t n,
                           const TileShape& t, float* row, float* q_t) {
  pack_item_rows_t(p.q, p.D, p.scale, p, s, hkv, i0, n, t, row, q_t);
}

// Rows [j0, j0 + nk) of k or v (kv head hkv) as f32, row stride `stride`, zero beyond
// nk up to kTileK rows and beyond dim up to stride columns.
inline void pack_rows(const Activation& a, const SequenceSpan& s, int64_t hkv, int64_t j0, int64_t nk,
                      int64_t dim, int64_t stride, float* out) {
  const int64_t row_bytes = dim * int64_t(dtype_size(a.dtype));
  for (int64_t c = 0; c < nk; ++c) {
    float* dst = out + c * stride;
    const int64_t offset = s.batch * a.stride_b + (s.k_begin + j0 + c) * a.stride_l + hkv * a.stride_h;
    // Rows lie Hkv·dim apart (often 4 KiB multiples), which the hardware prefetcher does not
    // follow: ask for the same row of the next tile now.
    if (j0 + c + kTileK < s.k_len) {
      const char* next = static_cast<const char*>(a.data) +
                         (offset + kTileK * a.stride_l) * int64_t(dtype_size(a.dtype));
      for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(next + b);
    }
    load_row_simd(a.data, a.dtype, offset, dim, dst);
    std::fill(dst + dim, dst + stride, 0.0f);
  }
  std::fill(out + nk * stride, out + kTileK * stride, 0.0f);
}

// Where row j of a K/V activation lies for kv head hkv of sequence s, typed.
template <typename T>
const T* kv_row(const Activation& a, const SequenceSpan& s, int64_t hkv, int64_t j) {
  return static_cast<const T*>(a.data) + s.batch * a.stride_b + (s.k_begin + j) * a.stride_l + hkv * a.stride_h;
}

// Sᵀ (kTileK x rows_pad) = K Qᵀ for kTileK K rows of stride k_stride >= D (packed, or
// where they lie).
inline void scores_t(const float* q_t, const float* k_rows, int64_t k_stride, int64_t D, const TileShape& t,
                     float* s_t) {
  outer_product(q_t, t.rows_pad, k_rows, k_stride, 1, D, kTileK, t.rows_pad, s_t, false);
}

// Decode scoring and P·V read K and V rows where they lie, as f32, bf16 or f16: each row
// is used once per call, so packing would only copy it. Rows lie Hkv·D apart (often 4 KiB
// multiples), which the hardware prefetcher does not follow, so the caller asks for rows
// ahead (RowPrefetch) while it computes.

inline float widen(float x) { return x; }
inline float widen(bf16 x) { return bf16_to_float(x); }
inline float widen(f16 x) { return f16_to_float(x); }

// Elements [x, x + N) of a row as one f32 vector (bf16 and f16 widened exactly).
template <typename T>
HWY_INLINE hn::Vec<FloatTag> load_widened(const T* HWY_RESTRICT row, int64_t x) {
  const FloatTag d;
  if constexpr (std::is_same_v<T, float>) {
    return hn::LoadU(d, row + x);
  } else if constexpr (std::is_same_v<T, bf16>) {
    const hn::Rebind<hwy::bfloat16_t, FloatTag> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::bfloat16_t*>(row) + x));
  } else {
    const hn::Rebind<hwy::float16_t, FloatTag> dh;
    return hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(row) + x));
  }
}

// Rows [0, count) of a tensor, stride_bytes apart: prefetch(c) asks for row c (its first
// `bytes`) into L1. Callers stay a few rows ahead: rows 4 KiB apart share the same few
// L1 sets, so rows fetched much earlier would be evicted before use.
struct RowPrefetch {
  const char* base = nullptr;
  int64_t stride_bytes = 0, bytes = 0, count = 0;
  void operator()(int64_t c) const {
    if (c >= count) return;
    const char* row = base + c * stride_bytes;
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 3);
  }
};

// Up to 4 rows of decode scores for key row kc: s[r·rs] = q_r · kc.
template <int R, typename T>
HWY_INLINE void dot_rows(const float* HWY_RESTRICT q, int64_t q_stride, const T* HWY_RESTRICT kc, int64_t D,
                         float* HWY_RESTRICT s, int64_t rs) {
  const FloatTag d;
  const int64_t N = row_vector(), full = D / N * N;
  hn::Vec<FloatTag> acc[R];
  for (int r = 0; r < R; ++r) acc[r] = hn::Zero(d);
  for (int64_t x = 0; x < full; x += N) {
    const auto k = load_widened(kc, x);
    for (int r = 0; r < R; ++r) acc[r] = hn::MulAdd(hn::LoadU(d, q + r * q_stride + x), k, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    float sum = hn::GetLane(hn::SumOfLanes(d, acc[r]));
    for (int64_t x = full; x < D; ++x) sum = std::fma(q[r * q_stride + x], widen(kc[x]), sum);
    s[r * rs] = sum;
  }
}

#if HWY_TARGET <= HWY_AVX3
// A block of R rows x 16/R keys of decode scores: one accumulator per (row, key) along D,
// then sum_lanes16. Rows and keys past the valid ones repeat the last valid one (results
// dropped), so every score goes through the same arithmetic whatever block it falls in.
template <int R, typename T, class Ahead>
HWY_INLINE void dot_block(const float* HWY_RESTRICT q, int64_t q_stride, int64_t rows, const T* HWY_RESTRICT k,
                          int64_t k_stride, int64_t D, int64_t c0, int64_t nk, float* HWY_RESTRICT s, int64_t rs,
                          int64_t cs, bool call_ahead, const Ahead& ahead) {
  constexpr int C = 16 / R;
  const FloatTag d;
  const int64_t N = row_vector(), full = D / N * N;
  const float* qr[R];
  const T* kc[C];
  for (int r = 0; r < R; ++r) qr[r] = q + std::min<int64_t>(r, rows - 1) * q_stride;
  for (int c = 0; c < C; ++c) {
    if (call_ahead && c0 + c < nk) ahead(c0 + c);
    kc[c] = k + std::min<int64_t>(c0 + c, nk - 1) * k_stride;
  }
  hn::Vec<FloatTag> acc[16];
  for (int e = 0; e < 16; ++e) acc[e] = hn::Zero(d);
  for (int64_t x = 0; x < full; x += N) {
    hn::Vec<FloatTag> qv[R];
    for (int r = 0; r < R; ++r) qv[r] = hn::LoadU(d, qr[r] + x);
    for (int c = 0; c < C; ++c) {
      const auto kv = load_widened(kc[c], x);
      for (int r = 0; r < R; ++r) acc[r * C + c] = hn::MulAdd(qv[r], kv, acc[r * C + c]);
    }
  }
  __m512 raw[16];
  for (int e = 0; e < 16; ++e) raw[e] = acc[e].raw;
  alignas(64) float sums[16];
  _mm512_store_ps(sums, sum_lanes16(raw));
  for (int r = 0; r < R && r < rows; ++r)
    for (int c = 0; c < C && c0 + c < nk; ++c) {
      float sum = sums[r * C + c];
      for (int64_t x = full; x < D; ++x) sum = std::fma(qr[r][x], widen(kc[c][x]), sum);
      s[r * rs + (c0 + c) * cs] = sum;
    }
}
#endif

// S[r·rs + c·cs] = q_r · k_c for keys [0, nk) and rows [0, rows): one dot product along D
// per (row, key), in whole vectors, a fixed reduction and then a scalar tail, so the bits
// depend neither on whether k is a packed f32 tile or the K tensor itself (widening is
// exact) nor on how rows and keys are blocked (GQA and MHA give the same bits). q holds
// scaled queries, q_stride apart; k rows are k_stride apart. ahead(c) runs before key c.
template <typename T, class Ahead>
void dot_scores(const float* HWY_RESTRICT q, int64_t q_stride, int64_t rows, const T* HWY_RESTRICT k,
                int64_t k_stride, int64_t D, int64_t nk, float* HWY_RESTRICT s, int64_t rs, int64_t cs,
                const Ahead& ahead) {
#if HWY_TARGET <= HWY_AVX3
  if (nk <= 0 || rows <= 0) return;
  // 1 or 2 rows: 16 or 8 keys a block; otherwise blocks of 4 rows x 4 keys.
  const auto run = [&](auto rows_per_block) {
    constexpr int R = decltype(rows_per_block)::value;
    for (int64_t c0 = 0; c0 < nk; c0 += 16 / R)
      for (int64_t r = 0; r < rows; r += R)
        dot_block<R>(q + r * q_stride, q_stride, rows - r, k, k_stride, D, c0, nk, s + r * rs, rs, cs, r == 0,
                     ahead);
  };
  if (rows == 1) run(std::integral_constant<int, 1>{});
  else if (rows == 2) run(std::integral_constant<int, 2>{});
  else run(std::integral_constant<int, 4>{});
#else
  for (int64_t c = 0; c < nk; ++c) {
    ahead(c);
    const T* kc = k + c * k_stride;
    float* sc = s + c * cs;
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) dot_rows<4>(q + r * q_stride, q_stride, kc, D, sc + r * rs, rs);
    switch (rows - r) {
      case 0: break;
      case 1: dot_rows<1>(q + r * q_stride, q_stride, kc, D, sc + r * rs, rs); break;
      case 2: dot_rows<2>(q + r * q_stride, q_stride, kc, D, sc + r * rs, rs); break;
      default: dot_rows<3>(q + r * q_stride, q_stride, kc, D, sc + r * rs, rs); break;
    }
  }
#endif
}

// Calls f with std::type_identity of a float dtype's element type (float, bf16 or f16).
template <class F>
decltype(auto) with_float_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBF16: return f(std::type_identity<bf16>{});
    case DType::kF16: return f(std::type_identity<f16>{});
    default: return f(std::type_identity<float>{});
  }
}

// bf16 inputs where the CPU has AVX512-BF16: the products on vdpbf16ps. In tiles P is
// rounded to bf16 for P·V (as every bf16 attention kernel does; the pass rule's baseline
// too); decode scores Q·K there and keeps P·V in f32.
inline bool use_bf16_dot(const AttentionParams& p) {
#if HWY_TARGET == HWY_AVX3
  return p.q.dtype == DType::kBF16 && has_avx512_bf16();
#else
  (void)p;
  return false;
#endif
}

// Decode queries as bf16 pairs: pairs per row, a multiple of 16 (no more than t.d_vec
// floats, so they fit where the f32 rows go).
inline int64_t query_pair_stride(const AttentionParams& p) { return round_up((p.D + 1) / 2, 16); }

// dot_scores for bf16 K on vdpbf16ps (bf16_dot_block, same blocking and lane sums): q as
// bf16 pairs, q_stride pairs apart, and s = scale · (q_r · k_c), the scale applied after
// the sum so the bf16 queries stay exact.
template <class Ahead>
void dot_scores_bf16(const uint32_t* q, int64_t q_stride, int64_t rows, const bf16* k, int64_t k_stride, int64_t D,
                     int64_t nk, float scale, float* HWY_RESTRICT s, int64_t rs, int64_t cs, const Ahead& ahead) {
  const int R = rows == 1 ? 1 : rows == 2 ? 2 : 4, C = 16 / R;
  for (int64_t c0 = 0; c0 < nk; c0 += C)
    for (int64_t r0 = 0; r0 < rows; r0 += R) {
      const uint32_t* q_rows[4];
      const uint16_t* k_rows[16];
      for (int r = 0; r < R; ++r) q_rows[r] = q + std::min<int64_t>(r0 + r, rows - 1) * q_stride;
      for (int c = 0; c < C; ++c) {
        if (r0 == 0 && c0 + c < nk) ahead(c0 + c);
        k_rows[c] = reinterpret_cast<const uint16_t*>(k + std::min<int64_t>(c0 + c, nk - 1) * k_stride);
      }
      alignas(64) float sums[16];
      bf16_dot_block(R, q_rows, k_rows, D, sums);
      for (int r = 0; r < R && r0 + r < rows; ++r)
        for (int c = 0; c < C && c0 + c < nk; ++c) s[(r0 + r) * rs + (c0 + c) * cs] = sums[r * C + c] * scale;
    }
}

// An item's decode rows as decode_scores reads them, rows_out rows (zero past group·n):
// bf16 pairs, unscaled, where use_bf16_dot; scaled f32 rows t.d_vec apart otherwise.
inline void pack_decode_queries(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv,
                                int64_t i0, int64_t n, int64_t rows_out, float* q) {
  if (use_bf16_dot(p)) {
    const int64_t stride = query_pair_stride(p);
    uint32_t* pairs = reinterpret_cast<uint32_t*>(q);
    std::fill_n(pairs, rows_out * stride, 0u);
    // A bf16 row read as little-endian uint32 already is its pairs (even element low).
    for (int64_t r = 0; r < p.group * n; ++r)
      std::memcpy(pairs + r * stride, static_cast<const uint16_t*>(p.q.data) + item_row_offset(p.q, p, s, hkv, i0, n, r),
                  size_t(p.D) * sizeof(uint16_t));
    return;
  }
  pack_item_rows(p.q, p.D, t.d_vec, p, s, hkv, i0, n, rows_out, q);
  for (int64_t e = 0; e < rows_out * t.d_vec; ++e) q[e] *= p.scale;
}

// Decode scores of keys [j0, j0 + nk) of kv head hkv, read where they lie:
// S[r·rs + c·cs] = scale · q_r · k_c for the first `rows` rows of q (pack_decode_queries).
// The forward, its probs and stats, and the backward all score decode calls here, so P is
// recomputed bit for bit.
template <typename KT, class Ahead>
void decode_scores(const AttentionParams& p, const TileShape& t, const SequenceSpan& s, int64_t hkv, int64_t rows,
                   int64_t j0, int64_t nk, const float* q, float* out, int64_t rs, int64_t cs, const Ahead& ahead) {
  if constexpr (std::is_same_v<KT, bf16>) {
    if (use_bf16_dot(p)) {
      dot_scores_bf16(reinterpret_cast<const uint32_t*>(q), query_pair_stride(p), rows, kv_row<bf16>(p.k, s, hkv, j0),
                      p.k.stride_l, p.D, nk, p.scale, out, rs, cs, ahead);
      return;
    }
  }
  dot_scores(q, t.d_vec, rows, kv_row<KT>(p.k, s, hkv, j0), p.k.stride_l, p.D, nk, out, rs, cs, ahead);
}

// The first key tile of an item: tiles start at multiples of kTileK, so every row meets
// the same tiles whichever rows share its item (GQA and MHA give the same bits).
inline int64_t first_tile(const AttentionParams& p, const SequenceSpan& s, int64_t i0) {
  return key_range(p, s, i0).lo / kTileK * kTileK;
}

// Softcap, bias, ALiBi and every mask on column `r` of Sᵀ (query i of head h) for keys
// [j0, j0 + kTileK); keys past nk (tile padding) become -inf.
inline void modify_scores_column(const AttentionParams& p, const SequenceSpan& s, int64_t h, int64_t i,
                                 int64_t j0, int64_t nk, float* s_col, int64_t rows_pad) {
  const KeyRange range = key_range(p, s, i);
  if (p.softcap > 0.0f) {
    const float inv = 1.0f / p.softcap;
    for (int64_t c = 0; c < nk; ++c) s_col[c * rows_pad] = p.softcap * std::tanh(s_col[c * rows_pad] * inv);
  }
  if (p.bias.data) {
    const int64_t base = s.batch * p.bias.stride_b + h * p.bias.stride_h + i * p.bias.stride_i;
    for (int64_t c = 0; c < nk; ++c) {
      const float b = load_float(p.bias.data, p.bias.dtype, base + (j0 + c) * p.bias.stride_j);
      float& x = s_col[c * rows_pad];
      x = b <= p.bias_masked_at ? kNegInf : x + b;
    }
  }
  if (p.alibi_slopes) {
    const float slope = p.alibi_slopes[h * p.alibi_stride];
    const int64_t diag = i + s.kv_offset;
    for (int64_t c = 0; c < nk; ++c) s_col[c * rows_pad] -= slope * float(std::llabs(j0 + c - diag));
  }
  if (p.mask.data) {
    const bool* m = static_cast<const bool*>(p.mask.data) + s.batch * p.mask.stride_b + h * p.mask.stride_h +
                    i * p.mask.stride_i;
    for (int64_t c = 0; c < nk; ++c)
      if (!m[(j0 + c) * p.mask.stride_j]) s_col[c * rows_pad] = kNegInf;
  }
  const int64_t lo = std::clamp<int64_t>(range.lo - j0, 0, nk), hi = std::clamp<int64_t>(range.hi - j0, lo, nk);
  for (int64_t c = 0; c < lo; ++c) s_col[c * rows_pad] = kNegInf;
  for (int64_t c = hi; c < kTileK; ++c) s_col[c * rows_pad] = kNegInf;
}

// True when no column of the tile needs more than the scale (no softcap, bias, ALiBi,
// mask) and every row sees every key [j0, j0 + kTileK): the common interior tile.
inline bool tile_is_plain(const AttentionParams& p, const SequenceSpan& s, int64_t i0, int64_t n, int64_t j0,
                          int64_t nk) {
  if (nk != kTileK || p.softcap > 0.0f || p.bias.data || p.alibi_slopes || p.mask.data) return false;
  const KeyRange first = key_range(p, s, i0), last = key_range(p, s, i0 + n - 1);
  return last.lo <= j0 && first.hi >= j0 + kTileK;
}

// Modifies every Sᵀ column of an item (group·n rows); padded rows become -inf.
inline void modify_scores(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t i0, int64_t n,
                          int64_t j0, int64_t nk, const TileShape& t, float* s_t) {
  const int64_t rows = p.group * n;
  if (!tile_is_plain(p, s, i0, n, j0, nk))
    for (int64_t r = 0; r < rows; ++r)
      modify_scores_column(p, s, hkv * p.group + r / n, i0 + r % n, j0, nk, s_t + r, t.rows_pad);
  for (int64_t c = 0; c < kTileK; ++c) std::fill(s_t + c * t.rows_pad + rows, s_t + (c + 1) * t.rows_pad, kNegInf);
}

// With a mask or bias, a key inside the tile may be masked for every row; its K or V row
// is then zeroed so garbage there (NaN, inf) cannot reach a result through 0 · x. A key
// is unattended when its column of weights (P in the forward, dS in the backward) is 0.
inline bool key_unattended(const float* p_t, int64_t c, const TileShape& t) {
  const FloatTag d;
  const int64_t N = row_vector();
  auto any = hn::Zero(d);
  for (int64_t r = 0; r < t.rows_pad; r += N) any = hn::Or(any, hn::Load(d, p_t + c * t.rows_pad + r));
  return hn::AllTrue(d, hn::Eq(any, hn::Zero(d)));
}
inline void zero_unattended_rows(const float* p_t, int64_t nk, const TileShape& t, float* v_rows, int64_t stride) {
  for (int64_t c = 0; c < nk; ++c)
    if (key_unattended(p_t, c, t)) std::fill_n(v_rows + c * stride, stride, 0.0f);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace detail
}  // namespace multihead
HWY_AFTER_NAMESPACE();

#endif  // MULTIHEAD_SIMD_TILES_INL_H_
