// The bf16 micro-kernel: AVX512-BF16's vdpbf16ps (two bf16 products summed into f32 per
// lane), which Highway 1.0.3 lacks. Plain C++ declarations; the definitions carry
// __attribute__((target("avx512bf16"))) and run only where has_avx512_bf16() says so.
//
// The same outer product as the f32 kernels (simd_tiles-inl.hpp), over pairs:
//   out[a, r..r+32) (+)= Σ_x2 dot2(sc(x2, a), vec[x2, r..r+32))
// where vec holds bf16 pairs (one uint32 per lane) and sc(x2, a) = sc[a·sa + x2·sx] is one
// pair broadcast to every lane.
#pragma once

#include <cstdint>

namespace multihead::detail {

bool has_avx512_bf16();

// count % 8 == 0 is not required; width is a multiple of 32 (2 vectors of 16 f32). Without
// accumulate, out = scale · Σ (the sums rounded first, then scaled).
void bf16_outer_product(const uint32_t* vec, int64_t vstride, const uint32_t* sc, int64_t sa, int64_t sx,
                        int64_t X2, int64_t count, int64_t width, float* out, bool accumulate, float scale = 1.0f);

// Pairs the rows of a (2·n2 x width) f32 block: out[x2, r] = (bf16(in[2·x2, r]), bf16(in[2·x2+1, r])),
// rounding to nearest even. width % 16 == 0.
void bf16_pair_rows(const float* in, int64_t in_stride, int64_t n2, int64_t width, uint32_t* out,
                    int64_t out_stride);

// The same from bf16 rows where they lie (src_stride elements apart), exact: pairs n2 row
// pairs, rows at or past n read as zero. Only the first width columns are written.
void bf16_pair_source_rows(const uint16_t* src, int64_t src_stride, int64_t n, int64_t width, int64_t n2,
                           uint32_t* out, int64_t out_stride);

// Zeroes row c's half of every pair in its pair row (width columns, stride apart).
void bf16_clear_pair_half(uint32_t* pairs, int64_t stride, int64_t c, int64_t width);

// Sixteen decode scores, unscaled, from a block of R rows x 16/R keys (R = 1, 2 or 4):
// sums[r·16/R + c] = q_r · k_c. Each q_r holds a query as bf16 pairs, zero past D up to a
// multiple of 16 pairs; each k_c is a bf16 K row where it lies, read under a mask (any D,
// any alignment). One vdpbf16ps chain per (row, key) along D, then sum_lanes16, the f32
// path's reduction.
void bf16_dot_block(int R, const uint32_t* const* q_rows, const uint16_t* const* k_rows, int64_t D, float* sums);

}  // namespace multihead::detail
