// Moving rows between the tensors and the SIMD tiles (re-included once per Highway
// target): loads with conversion, the item's row layout, in-register transposes, packing
// of Qᵀ, Q, dO and K/V rows, and zeroing K/V rows of keys no row attends.
#if defined(MULTIHEAD_TILE_PACKING_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MULTIHEAD_TILE_PACKING_INL_H_
#undef MULTIHEAD_TILE_PACKING_INL_H_
#else
#define MULTIHEAD_TILE_PACKING_INL_H_
#endif

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstring>

#include <hwy/highway.h>

#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/cpu/simd_common-inl.hpp"

HWY_BEFORE_NAMESPACE();
namespace multihead {
namespace detail {
namespace HWY_NAMESPACE {

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

// Row j of kv head hkv of sequence s in the paged cache (AttentionParams::paged): its
// elements, and where its int8 scale lies (null for f32 and bf16 blocks); the scales of a
// run of rows inside one block are consecutive.
struct PagedRow {
  const std::byte* data;
  const float* scale;
};
inline PagedRow paged_row(const AttentionParams& p, bool values, const SequenceSpan& s, int64_t hkv, int64_t j) {
  const KvCacheLayout& c = p.paged_cache;
  // block_size is a power of two (KvCache checks): a shift and a mask, not a division,
  // since decode asks for every key row it prefetches.
  const int shift = std::countr_zero(uint64_t(c.block_size));
  const int64_t block = p.paged_tables[size_t(s.batch)][j >> shift];
  const int64_t row = hkv * c.block_size + (j & (c.block_size - 1)), dim = values ? c.v_head_dim : c.head_dim;
  const std::byte* blocks = values ? c.v_blocks : c.k_blocks;
  const float* scales = values ? c.v_scales : c.k_scales;
  return {blocks + block * (values ? c.v_block_bytes : c.k_block_bytes) + row * dim * int64_t(element_size(c.dtype)),
          scales ? scales + block * c.scales_block_stride + row : nullptr};
}

// Keys [j0, j0 + nk) of the paged cache as runs that stay inside one block (each run's
// rows are contiguous there): f(c0, run) for the tile's columns [c0, c0 + run), in order.
template <class F>
inline void for_each_paged_run(const AttentionParams& p, int64_t j0, int64_t nk, F&& f) {
  const int64_t bs = p.paged_cache.block_size;
  for (int64_t c0 = 0; c0 < nk;) {
    const int64_t run = std::min(nk - c0, bs - ((j0 + c0) & (bs - 1)));  // bs: a power of two
    f(c0, run);
    c0 += run;
  }
}

// Rows [j0, j0 + nk) of the paged cache's keys (values: false) or values as f32 rows
// `stride` floats apart (int8: scale · q, the values gather() gives), zero-padded to kTileK
// rows: a tile spans kTileK / block_size blocks, each run of rows contiguous in its block.
inline void pack_paged_rows(const AttentionParams& p, bool values, const SequenceSpan& s, int64_t hkv, int64_t j0,
                            int64_t nk, int64_t stride, float* out) {
  const KvCacheLayout& c = p.paged_cache;
  const int64_t dim = values ? c.v_head_dim : c.head_dim;
  for (int64_t col = 0; col < nk; ++col) {
    const PagedRow row = paged_row(p, values, s, hkv, j0 + col);
    float* dst = out + col * stride;
    if (c.dtype == KvCacheDType::kI8) {
      const auto* q = reinterpret_cast<const int8_t*>(row.data);
      for (int64_t x = 0; x < dim; ++x) dst[x] = *row.scale * float(q[x]);
    } else {
      load_row_simd(row.data, c.dtype == KvCacheDType::kBF16 ? DType::kBF16 : DType::kF32, 0, dim, dst);
    }
    std::fill(dst + dim, dst + stride, 0.0f);
  }
  std::fill(out + nk * stride, out + kTileK * stride, 0.0f);
}

// Rows [j0, j0 + nk) of a bf16 paged cache's keys or values copied as they are, `stride`
// elements apart.
inline void copy_paged_bf16_rows(const AttentionParams& p, bool values, const SequenceSpan& s, int64_t hkv,
                                 int64_t j0, int64_t nk, uint16_t* out, int64_t stride) {
  const int64_t dim = values ? p.paged_cache.v_head_dim : p.paged_cache.head_dim;
  for (int64_t col = 0; col < nk; ++col)
    std::memcpy(out + col * stride, paged_row(p, values, s, hkv, j0 + col).data, size_t(dim) * sizeof(uint16_t));
}

// K rows [j0, j0 + nk) of a bf16 tensor (or bf16 paged cache) as pairs (kTileK x D/2),
// zero-padded: the forward's vdpbf16ps scores and the backward's recomputation of them.
inline void pack_key_pairs(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t j0, int64_t nk,
                    uint32_t* out) {
  const int64_t d2 = (p.D + 1) / 2;
  uint16_t* halves = reinterpret_cast<uint16_t*>(out);
  std::fill_n(out, kTileK * d2, 0u);
  if (p.paged) return copy_paged_bf16_rows(p, false, s, hkv, j0, nk, halves, 2 * d2);
  for (int64_t c = 0; c < nk; ++c) {
    const uint16_t* src = static_cast<const uint16_t*>(p.k.data) + s.batch * p.k.stride_b +
                          (s.k_begin + j0 + c) * p.k.stride_l + hkv * p.k.stride_h;
    std::copy_n(src, p.D, halves + c * 2 * d2);
  }
}

// True when rows [j0, j0 + kTileK) of k can serve as bf16 pairs where they lie: whole pairs
// (even D), each row starting on a pair boundary.
inline bool key_pairs_in_place(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t j0, int64_t nk) {
  return !p.paged && nk == kTileK && p.D % 2 == 0 && p.k.stride_l % 2 == 0 &&
         reinterpret_cast<uintptr_t>(kv_row<bf16>(p.k, s, hkv, j0)) % 4 == 0;
}

// Sᵀ = scale · K Qᵀ of keys [j0, j0 + nk) on vdpbf16ps, from Qᵀ as unscaled bf16 pairs
// (q_pairs, rows_pad apart): K read as pairs where it lies, else packed into k_scratch
// (kTileK x D/2). The forward's tiles and the backward's recomputation both call this, so
// the backward's P is the forward's bit for bit at any logit size.
inline void bf16_scores_tile(const AttentionParams& p, const SequenceSpan& s, int64_t hkv, int64_t j0, int64_t nk,
                             const uint32_t* q_pairs, int64_t rows_pad, uint32_t* k_scratch, float* s_t) {
  const int64_t d2 = (p.D + 1) / 2;
  const uint32_t* k_pairs = k_scratch;
  int64_t k_stride = d2;
  if (key_pairs_in_place(p, s, hkv, j0, nk)) {
    k_pairs = reinterpret_cast<const uint32_t*>(kv_row<bf16>(p.k, s, hkv, j0));
    k_stride = p.k.stride_l / 2;
  } else {
    pack_key_pairs(p, s, hkv, j0, nk, k_scratch);
  }
  bf16_outer_product(q_pairs, rows_pad, k_pairs, k_stride, 1, d2, kTileK, rows_pad, s_t, false, p.scale);
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

#endif  // MULTIHEAD_TILE_PACKING_INL_H_
