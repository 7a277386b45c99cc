// A paged key/value cache for incremental decoding: many sequences of one attention
// layer share a fixed pool of blocks, each holding `block_size` tokens.
//
//   KvCache cache({.num_kv_heads = 8, .head_dim = 128, .capacity = 65536});
//   const int64_t s = cache.new_sequence();
//   cache.append(s, k, v);          // k (n, Hkv, D), v (n, Hkv, Dv): f32 or bf16 views
//   const int64_t t = cache.fork(s);  // shares s's blocks, copy-on-write
//   auto [keys, values] = cache.gather(t);  // f32 (L, Hkv, D), (L, Hkv, Dv)
//
// Storage. The pool is allocated and touched (zero-filled) once, when the cache is
// made: capacity() tokens = the requested capacity rounded up to whole blocks. append
// and truncate never allocate or fault a page (new_sequence and fork reserve the new
// sequence's block table for the whole pool: 4 bytes per block). Blocks are handed out from a free list and counted by reference: fork shares
// every block of its parent; a shared block that is only partly filled is copied when
// either side appends into it (copy-on-write); full shared blocks are never copied.
//
// Element types (KvCacheDType): f32 (stored as given), bf16 (rounded to nearest even;
// NaN/inf kept), int8 (symmetric, one f32 scale per (token, kv head), K and V apart:
// scale = max|x| / 127, q = round-half-even(x / scale) clamped to [-127, 127]; a row of
// zeros has scale 0 and reads back as zeros; a row with NaN or inf cannot be quantized
// and is rejected). Stored values are only widened to f32 by gather().
//
// Errors. Every operation checks all of its inputs (and counts the blocks it needs,
// copy-on-write copies included) before it changes anything: a call that throws
// multihead::Error leaves the cache byte for byte as it was.
//
// Thread safety: like std::vector. Concurrent const calls are safe; a mutating call
// (new_sequence, append, truncate, fork, release, reset) must not run concurrently
// with any other call on the same cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>

#include "multihead/tensor.hpp"

namespace multihead {

enum class KvCacheDType : uint8_t { kF32, kBF16, kI8 };
const char* to_string(KvCacheDType dtype);  // "float32", "bfloat16", "int8"
// 4, 2, 1 (inline: the kernels ask it for every row they address)
constexpr size_t element_size(KvCacheDType dtype) {
  return dtype == KvCacheDType::kF32 ? 4 : dtype == KvCacheDType::kBF16 ? 2 : 1;
}

struct KvCacheOptions {
  int64_t num_kv_heads = 0;             // Hkv >= 1
  int64_t head_dim = 0;                 // D >= 1 (keys)
  std::optional<int64_t> v_head_dim{};  // Dv >= 1 (values); default D
  int64_t capacity = 65536;             // tokens >= 1, rounded up to whole blocks
  int64_t block_size = 16;              // tokens per block: a power of two, 1..256
  KvCacheDType dtype = KvCacheDType::kF32;
};

// Where the cache keeps its data, for kernels that read it in place. Valid until the
// cache is destroyed (the pool never moves); its contents change with every mutating
// call.
//
// Blocks are numbered 0..num_blocks-1; a sequence's block table (KvCache::block_table)
// lists, in token order, the block of its tokens [j·block_size, (j+1)·block_size).
// Token t of a sequence lies in block b = table[t / block_size], slot s = t % block_size.
// Inside a block the layout is head-major, so one kv head's keys over consecutive
// tokens are contiguous:
//
//   K block b: k_blocks + b · k_block_bytes,  elements [Hkv][block_size][D]  of dtype
//   V block b: v_blocks + b · v_block_bytes,  elements [Hkv][block_size][Dv] of dtype
//   key (t, h, d):   K block b, element (h · block_size + s) · D + d
//   value (t, h, d): V block b, element (h · block_size + s) · Dv + d
//
// int8 only (nullptr otherwise): one f32 scale per (token, kv head), K and V apart,
//   k_scales + b · scales_block_stride + h · block_size + s    (likewise v_scales)
// and the value is scale · q. Slots past a sequence's length hold stale data.
// k_block_bytes and v_block_bytes are multiples of 64 (blocks are 64-byte aligned;
// any bytes past the [Hkv][block_size][D] elements are padding). The whole pool is one
// allocation of KvCache::nbytes() bytes starting at k_blocks: K blocks, V blocks, then
// the int8 scales.
struct KvCacheLayout {
  KvCacheDType dtype = KvCacheDType::kF32;
  int64_t num_kv_heads = 0, head_dim = 0, v_head_dim = 0;
  int64_t block_size = 0, num_blocks = 0;
  const std::byte* k_blocks = nullptr;
  const std::byte* v_blocks = nullptr;
  int64_t k_block_bytes = 0, v_block_bytes = 0;
  const float* k_scales = nullptr;
  const float* v_scales = nullptr;
  int64_t scales_block_stride = 0;  // floats between the scales of consecutive blocks
};

class KvCache {
 public:
  // Throws InvalidArgument for impossible options, CapacityExceeded when the pool's
  // size overflows or cannot be allocated.
  explicit KvCache(const KvCacheOptions& options);
  ~KvCache();
  KvCache(KvCache&&) noexcept;
  KvCache& operator=(KvCache&&) noexcept;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // A new, empty sequence. Ids are never reused (not even after reset()).
  int64_t new_sequence();
  // Appends n >= 0 tokens: k (n, Hkv, D), v (n, Hkv, Dv), f32 or bf16, any non-negative
  // strides with a contiguous last dim. CapacityExceeded (nothing appended) when the free
  // blocks do not cover the tokens and any copy-on-write copy.
  void append(int64_t id, const TensorView& k, const TensorView& v);
  // Appends n tokens to each of B distinct sequences: k (B, n, Hkv, D), v (B, n, Hkv, Dv),
  // entry b to ids[b]. Everything (ids live and distinct, every entry's tokens, the blocks
  // of all appends together, copy-on-write copies included) is checked before the first
  // write: a call that throws appends nothing to any sequence.
  void append(std::span<const int64_t> ids, const TensorView& k, const TensorView& v);
  int64_t length(int64_t id) const;
  // Keeps the first n <= length(id) tokens; blocks no longer used are released.
  void truncate(int64_t id, int64_t n);
  // A new sequence with id's tokens, sharing its blocks (no block is taken).
  int64_t fork(int64_t id);
  // Forgets a sequence and releases its blocks.
  void release(int64_t id);
  // Forgets every sequence; every block is free again.
  void reset();
  // The tokens of a sequence widened to f32: k (L, Hkv, D), v (L, Hkv, Dv).
  std::pair<Tensor, Tensor> gather(int64_t id) const;

  // Block indices of a sequence in token order (ceil(length / block_size) entries);
  // valid until the next mutating call.
  std::span<const int32_t> block_table(int64_t id) const;
  KvCacheLayout layout() const;
  const KvCacheOptions& options() const;  // as given (v_head_dim filled in)

  int64_t num_sequences() const;
  // Sum of length() over the live sequences (a shared token counts once per sequence).
  int64_t used_tokens() const;
  int64_t capacity() const;  // tokens: num_blocks · block_size
  int64_t num_blocks() const;
  int64_t num_free_blocks() const;
  size_t nbytes() const;  // the pool: K and V blocks and int8 scales

 private:
  struct State;
  void check_tokens_(const TensorView& k, const TensorView& v, const char* k_name, const char* v_name) const;
  void write_tokens_(int64_t id, const TensorView& k, const TensorView& v);
  static TensorView batch_entry(const TensorView& x, int64_t b);
  std::unique_ptr<State> s_;
};

}  // namespace multihead
