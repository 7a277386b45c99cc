// The paged KV cache (include/multihead/kv_cache.hpp). One allocation holds the pool:
//   [K blocks][V blocks][K scales][V scales]   (scales only for int8)
// each region 64-byte aligned. Bookkeeping: a reference count per block, a free list
// (a stack; the lowest free block is handed out first after creation or reset), and
// per sequence its length and block table. Every operation validates and counts
// before its first write, so a throwing call changes nothing.
#include "multihead/kv_cache.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <new>
#include <string>
#include <vector>

#include "core/view_checks.hpp"
#include "multihead/error.hpp"

namespace multihead {

const char* to_string(KvCacheDType dtype) {
  switch (dtype) {
    case KvCacheDType::kF32: return "float32";
    case KvCacheDType::kBF16: return "bfloat16";
    case KvCacheDType::kI8: return "int8";
  }
  return "unknown";
}

namespace {

using std::to_string;

constexpr int64_t kAlign = 64;

[[noreturn]] void fail(ErrorKind kind, const std::string& tensor, const std::string& dim,
                       const std::string& expected, const std::string& got) {
  throw Error(kind, tensor, dim, expected, got);
}

// a · b rounded up to a multiple of 64, or CapacityExceeded.
int64_t aligned_product(std::initializer_list<int64_t> factors, const char* what) {
  int64_t p = 1;
  for (int64_t f : factors)
    if (__builtin_mul_overflow(p, f, &p)) fail(ErrorKind::kCapacityExceeded, "KvCache", what, "< 2^63 bytes", "overflow");
  if (p > std::numeric_limits<int64_t>::max() - kAlign)
    fail(ErrorKind::kCapacityExceeded, "KvCache", what, "< 2^63 bytes", "overflow");
  return (p + kAlign - 1) / kAlign * kAlign;
}

float read_float(const TensorView& v, int64_t offset) {
  if (v.dtype == DType::kBF16) return bf16_to_float(static_cast<const bf16*>(v.data)[offset]);
  return static_cast<const float*>(v.data)[offset];
}

}  // namespace

struct KvCache::State {
  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> blocks;
  };

  KvCacheOptions options;
  int64_t Hkv = 0, D = 0, Dv = 0, bs = 0, num_blocks = 0;
  size_t esize = 0;
  int64_t k_block_bytes = 0, v_block_bytes = 0, scales_stride = 0;
  Tensor pool;
  std::byte* k_base = nullptr;
  std::byte* v_base = nullptr;
  float* k_scales = nullptr;
  float* v_scales = nullptr;
  std::vector<int32_t> refcount;
  std::vector<int32_t> free_list;  // a stack: back() is handed out next
  std::map<int64_t, Sequence> sequences;
  int64_t next_id = 0;

  void reset_free_list() {
    free_list.clear();
    for (int64_t b = num_blocks - 1; b >= 0; --b) free_list.push_back(int32_t(b));
    std::fill(refcount.begin(), refcount.end(), 0);
  }

  Sequence& find(int64_t id) {
    auto it = sequences.find(id);
    if (it == sequences.end())
      fail(ErrorKind::kInvalidArgument, "id", "", "a live sequence id (from new_sequence or fork, not released)",
           to_string(id));
    return it->second;
  }
  const Sequence& find(int64_t id) const { return const_cast<State*>(this)->find(id); }

  // A new sequence with these blocks (their references already counted by the caller
  // after this returns); the table has room for the whole pool, so appends never allocate.
  int64_t add_sequence(int64_t length, const std::vector<int32_t>& blocks) {
    Sequence seq;
    seq.length = length;
    seq.blocks.reserve(size_t(num_blocks));
    seq.blocks.assign(blocks.begin(), blocks.end());
    sequences.emplace(next_id, std::move(seq));
    return next_id++;
  }

  int32_t take_block() {
    const int32_t b = free_list.back();
    free_list.pop_back();
    refcount[size_t(b)] = 1;
    return b;
  }
  void drop_block(int32_t b) {
    if (--refcount[size_t(b)] == 0) free_list.push_back(b);
  }

  std::byte* k_block(int32_t b) const { return k_base + int64_t(b) * k_block_bytes; }
  std::byte* v_block(int32_t b) const { return v_base + int64_t(b) * v_block_bytes; }

  // Copies block `from` (K, V and scales) into `to`.
  void copy_block(int32_t from, int32_t to) {
    std::memcpy(k_block(to), k_block(from), size_t(k_block_bytes));
    std::memcpy(v_block(to), v_block(from), size_t(v_block_bytes));
    if (k_scales) {
      std::memcpy(k_scales + to * scales_stride, k_scales + from * scales_stride, size_t(scales_stride) * 4);
      std::memcpy(v_scales + to * scales_stride, v_scales + from * scales_stride, size_t(scales_stride) * 4);
    }
  }

  // Stores one row of `width` values (src at element `offset` of view x) into dst,
  // with its int8 scale at *scale.
  void store_row(const TensorView& x, int64_t offset, int64_t width, std::byte* dst, float* scale) const {
    switch (options.dtype) {
      case KvCacheDType::kF32: {
        auto* out = reinterpret_cast<float*>(dst);
        for (int64_t d = 0; d < width; ++d) out[d] = read_float(x, offset + d);
        break;
      }
      case KvCacheDType::kBF16: {
        auto* out = reinterpret_cast<bf16*>(dst);
        if (x.dtype == DType::kBF16)
          std::memcpy(out, static_cast<const bf16*>(x.data) + offset, size_t(width) * 2);
        else
          for (int64_t d = 0; d < width; ++d) out[d] = float_to_bf16(read_float(x, offset + d));
        break;
      }
      case KvCacheDType::kI8: {
        // Symmetric: s = max|x| / 127 (rounded to f32; a subnormal maximum below 127 times
        // the least subnormal keeps the least subnormal, never 0), q = round-half-even of
        // x / s computed in double, clamped to [-127, 127]. In exact arithmetic
        // |x - s·q| <= s/2: x/s lies in [-127, 127] up to the f32 rounding of s (then q is
        // +-127 by the clamp and the error is at most 127·2^-24·s), and rounding to the
        // nearest integer moves it by at most 1/2. The double division adds at most
        // 2^-46·s. The row's values were checked finite before anything was written.
        float maxabs = 0.0f;
        for (int64_t d = 0; d < width; ++d) maxabs = std::max(maxabs, std::fabs(read_float(x, offset + d)));
        float s = float(double(maxabs) / 127.0);
        if (maxabs > 0.0f && s == 0.0f) s = std::numeric_limits<float>::denorm_min();
        *scale = s;
        auto* out = reinterpret_cast<int8_t*>(dst);
        if (s == 0.0f) {
          std::memset(out, 0, size_t(width));
          break;
        }
        for (int64_t d = 0; d < width; ++d) {
          const double q = std::nearbyint(double(read_float(x, offset + d)) / double(s));
          out[d] = int8_t(std::clamp(q, -127.0, 127.0));
        }
        break;
      }
    }
  }

  // Widens one stored row to f32.
  void load_row(const std::byte* src, float scale, int64_t width, float* out) const {
    switch (options.dtype) {
      case KvCacheDType::kF32: std::memcpy(out, src, size_t(width) * 4); break;
      case KvCacheDType::kBF16: {
        const auto* in = reinterpret_cast<const bf16*>(src);
        for (int64_t d = 0; d < width; ++d) out[d] = bf16_to_float(in[d]);
        break;
      }
      case KvCacheDType::kI8: {
        const auto* in = reinterpret_cast<const int8_t*>(src);
        for (int64_t d = 0; d < width; ++d) out[d] = scale * float(in[d]);
        break;
      }
    }
  }
};

KvCache::KvCache(const KvCacheOptions& options) : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.options = options;
  if (!s.options.v_head_dim) s.options.v_head_dim = options.head_dim;
  const KvCacheOptions& o = s.options;
  if (o.num_kv_heads < 1) fail(ErrorKind::kInvalidArgument, "num_kv_heads", "", ">= 1", to_string(o.num_kv_heads));
  if (o.head_dim < 1) fail(ErrorKind::kInvalidArgument, "head_dim", "", ">= 1", to_string(o.head_dim));
  if (*o.v_head_dim < 1) fail(ErrorKind::kInvalidArgument, "v_head_dim", "", ">= 1", to_string(*o.v_head_dim));
  if (o.block_size < 1 || o.block_size > 256 || (o.block_size & (o.block_size - 1)) != 0)
    fail(ErrorKind::kInvalidArgument, "block_size", "", "a power of two in [1, 256]", to_string(o.block_size));
  if (o.capacity < 1) fail(ErrorKind::kInvalidArgument, "capacity", "", ">= 1 token", to_string(o.capacity));
  if (o.dtype != KvCacheDType::kF32 && o.dtype != KvCacheDType::kBF16 && o.dtype != KvCacheDType::kI8)
    fail(ErrorKind::kInvalidArgument, "dtype", "", "float32, bfloat16 or int8", to_string(int(o.dtype)));
  s.Hkv = o.num_kv_heads, s.D = o.head_dim, s.Dv = *o.v_head_dim, s.bs = o.block_size;
  s.num_blocks = o.capacity / s.bs + (o.capacity % s.bs != 0);  // rounded up to whole blocks
  if (s.num_blocks > std::numeric_limits<int32_t>::max())
    fail(ErrorKind::kCapacityExceeded, "capacity", "blocks", "<= 2^31 - 1 blocks (int32 block tables)",
         to_string(s.num_blocks));
  s.esize = element_size(o.dtype);
  s.k_block_bytes = aligned_product({s.Hkv, s.bs, s.D, int64_t(s.esize)}, "K block");
  s.v_block_bytes = aligned_product({s.Hkv, s.bs, s.Dv, int64_t(s.esize)}, "V block");
  const bool int8 = o.dtype == KvCacheDType::kI8;
  s.scales_stride = int8 ? s.Hkv * s.bs : 0;
  const int64_t k_bytes = aligned_product({s.num_blocks, s.k_block_bytes}, "pool");
  const int64_t v_bytes = aligned_product({s.num_blocks, s.v_block_bytes}, "pool");
  const int64_t scale_bytes = int8 ? aligned_product({s.num_blocks, s.scales_stride, 4}, "pool") : 0;
  int64_t total;
  if (__builtin_add_overflow(k_bytes, v_bytes, &total) || __builtin_add_overflow(total, 2 * scale_bytes, &total))
    fail(ErrorKind::kCapacityExceeded, "KvCache", "pool", "< 2^63 bytes", "overflow");
  try {
    s.pool = Tensor::zeros(DType::kF32, {total / 4});  // zero-filled: every page is touched now
    s.refcount.assign(size_t(s.num_blocks), 0);
    s.free_list.reserve(size_t(s.num_blocks));
  } catch (const std::bad_alloc&) {
    fail(ErrorKind::kCapacityExceeded, "KvCache", "pool", "an allocation of " + to_string(total) + " bytes",
         "out of memory");
  }
  auto* base = static_cast<std::byte*>(s.pool.data());
  s.k_base = base;
  s.v_base = base + k_bytes;
  if (int8) {
    s.k_scales = reinterpret_cast<float*>(base + k_bytes + v_bytes);
    s.v_scales = reinterpret_cast<float*>(base + k_bytes + v_bytes + scale_bytes);
  }
  s.reset_free_list();
}

KvCache::~KvCache() = default;
KvCache::KvCache(KvCache&&) noexcept = default;
KvCache& KvCache::operator=(KvCache&&) noexcept = default;

int64_t KvCache::new_sequence() { return s_->add_sequence(0, {}); }

// Shapes, layouts and (int8) finiteness of one sequence's new tokens: k (n, Hkv, D),
// v (n, Hkv, Dv). Names the tensors `k_name` and `v_name` in errors.
void KvCache::check_tokens_(const TensorView& k, const TensorView& v, const char* k_name, const char* v_name) const {
  const State& s = *s_;
  static constexpr const char* kKLetters[] = {"n", "Hkv", "D"};
  static constexpr const char* kVLetters[] = {"n", "Hkv", "Dv"};
  const detail::NamedView nk{k, k_name, kKLetters}, nv{v, v_name, kVLetters};
  for (const detail::NamedView* t : {&nk, &nv}) {
    detail::check_view_layout(*t);
    detail::check_view_rank(*t, 3);
    detail::check_view_dtype(*t, {DType::kF32, DType::kBF16}, "float32 or bfloat16");
  }
  const int64_t n = k.shape[0];
  detail::check_view_dim(nk, 1, s.Hkv, " (the cache's num_kv_heads)");
  detail::check_view_dim(nk, 2, s.D, " (the cache's head_dim)");
  detail::check_view_dim(nv, 0, n, " (k's n)");
  detail::check_view_dim(nv, 1, s.Hkv, " (the cache's num_kv_heads)");
  detail::check_view_dim(nv, 2, s.Dv, " (the cache's v_head_dim)");
  if (n == 0 || s.options.dtype != KvCacheDType::kI8) return;
  for (const detail::NamedView* t : {&nk, &nv})
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < s.Hkv; ++h)
        for (int64_t d = 0; d < t->view.shape[2]; ++d) {
          const float x = read_float(t->view, i * t->view.strides[0] + h * t->view.strides[1] + d);
          if (!std::isfinite(x))
            fail(ErrorKind::kInvalidArgument, t->name,
                 "token " + to_string(i) + " (kv head " + to_string(h) + ", element " + to_string(d) + ")",
                 "finite values (an int8 cache cannot quantize NaN or inf)", std::to_string(x));
        }
}

// Blocks that appending n tokens to a sequence takes: the new ones past its table, plus a
// copy of its shared, partly filled last block (shared: `last_refs` > 1 references).
static int64_t blocks_needed(int64_t length, int64_t table_size, int64_t n, int64_t bs, int32_t last_refs,
                             bool* copy_last) {
  const int64_t new_length = length + n;
  const int64_t blocks_after = new_length / bs + (new_length % bs != 0);
  *copy_last = n > 0 && length % bs != 0 && last_refs > 1;
  return (blocks_after - table_size) + (*copy_last ? 1 : 0);
}

void KvCache::append(int64_t id, const TensorView& k, const TensorView& v) {
  State& s = *s_;
  State::Sequence& seq = s.find(id);
  check_tokens_(k, v, "k", "v");
  const int64_t n = k.shape[0];
  if (n == 0) return;
  const int64_t length = seq.length;
  int64_t new_length;
  if (__builtin_add_overflow(length, n, &new_length))
    fail(ErrorKind::kCapacityExceeded, "k", "dim 0 (n)", "a length that fits int64", to_string(n));
  bool copy_last = false;
  const int64_t needed = blocks_needed(length, int64_t(seq.blocks.size()), n, s.bs,
                                       seq.blocks.empty() ? 0 : s.refcount[size_t(seq.blocks.back())], &copy_last);
  if (needed > int64_t(s.free_list.size()))
    fail(ErrorKind::kCapacityExceeded, "KvCache", "blocks",
         "at most " + to_string(s.free_list.size()) + " free blocks of " + to_string(s.bs) + " tokens (capacity " +
             to_string(s.num_blocks * s.bs) + " tokens)",
         to_string(needed) + " blocks to append " + to_string(n) + " tokens to sequence " + to_string(id) +
             " of length " + to_string(length) + (copy_last ? " (1 copy-on-write copy)" : ""));
  write_tokens_(id, k, v);
}

// k (B, n, Hkv, D) and v (B, n, Hkv, Dv): k[b], v[b] go to ids[b]. Everything is checked
// before the first write: live and distinct ids, every sequence's tokens, and the blocks
// of all appends together (a copy-on-write copy taken by one sequence can leave the block
// unshared for a later one: counted in order, as the writes happen).
void KvCache::append(std::span<const int64_t> ids, const TensorView& k, const TensorView& v) {
  State& s = *s_;
  static constexpr const char* kKLetters[] = {"B", "n", "Hkv", "D"};
  static constexpr const char* kVLetters[] = {"B", "n", "Hkv", "Dv"};
  const detail::NamedView nk{k, "k", kKLetters}, nv{v, "v", kVLetters};
  for (const detail::NamedView* t : {&nk, &nv}) {
    detail::check_view_layout(*t);
    detail::check_view_rank(*t, 4);
  }
  const int64_t B = int64_t(ids.size());
  detail::check_view_dim(nk, 0, B, " (the number of sequence ids)");
  detail::check_view_dim(nv, 0, B, " (the number of sequence ids)");
  std::map<int32_t, int32_t> refs_dropped;  // per shared block: copies already taken in this call
  int64_t needed = 0;
  for (int64_t b = 0; b < B; ++b) {
    const State::Sequence& seq = s.find(ids[size_t(b)]);
    for (int64_t a = 0; a < b; ++a)
      if (ids[size_t(a)] == ids[size_t(b)])
        fail(ErrorKind::kInvalidArgument, "ids", "entry " + to_string(b), "distinct sequence ids",
             "id " + to_string(ids[size_t(b)]) + " again (entry " + to_string(a) + ")");
    const TensorView kb = batch_entry(k, b), vb = batch_entry(v, b);
    check_tokens_(kb, vb, "k", "v");
    const int64_t n = kb.shape[0];
    int64_t new_length;
    if (__builtin_add_overflow(seq.length, n, &new_length))
      fail(ErrorKind::kCapacityExceeded, "k", "dim 1 (n)", "a length that fits int64", to_string(n));
    int32_t last_refs = 0;
    if (!seq.blocks.empty()) {
      const int32_t last = seq.blocks.back();
      last_refs = s.refcount[size_t(last)] - refs_dropped[last];
    }
    bool copy_last = false;
    needed += blocks_needed(seq.length, int64_t(seq.blocks.size()), n, s.bs, last_refs, &copy_last);
    if (copy_last) ++refs_dropped[seq.blocks.back()];
  }
  if (needed > int64_t(s.free_list.size()))
    fail(ErrorKind::kCapacityExceeded, "KvCache", "blocks",
         "at most " + to_string(s.free_list.size()) + " free blocks of " + to_string(s.bs) + " tokens (capacity " +
             to_string(s.num_blocks * s.bs) + " tokens)",
         to_string(needed) + " blocks to append " + to_string(B) + " x " + to_string(k.shape[1]) + " tokens");
  for (int64_t b = 0; b < B; ++b) write_tokens_(ids[size_t(b)], batch_entry(k, b), batch_entry(v, b));
}

TensorView KvCache::batch_entry(const TensorView& x, int64_t b) {
  TensorView e;
  e.data = static_cast<char*>(x.data) + b * x.strides[0] * int64_t(dtype_size(x.dtype));
  e.dtype = x.dtype;
  e.rank = 3;
  for (int d = 0; d < 3; ++d) e.shape[d] = x.shape[d + 1], e.strides[d] = x.strides[d + 1];
  return e;
}

// Stores checked tokens (check_tokens_ and the block count passed): nothing here throws.
void KvCache::write_tokens_(int64_t id, const TensorView& k, const TensorView& v) {
  State& s = *s_;
  State::Sequence& seq = s.find(id);
  const int64_t n = k.shape[0];
  if (n == 0) return;
  const int64_t length = seq.length, new_length = length + n;
  const int64_t blocks_after = new_length / s.bs + (new_length % s.bs != 0);
  const bool copy_last = length % s.bs != 0 && s.refcount[size_t(seq.blocks.back())] > 1;
  if (copy_last) {
    const int32_t old = seq.blocks.back();
    const int32_t fresh = s.take_block();
    s.copy_block(old, fresh);
    s.drop_block(old);
    seq.blocks.back() = fresh;
  }
  while (int64_t(seq.blocks.size()) < blocks_after) seq.blocks.push_back(s.take_block());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = length + i;
    const int32_t b = seq.blocks[size_t(t / s.bs)];
    const int64_t slot = t % s.bs;
    for (int64_t h = 0; h < s.Hkv; ++h) {
      const int64_t row = h * s.bs + slot;
      s.store_row(k, i * k.strides[0] + h * k.strides[1], s.D, s.k_block(b) + row * s.D * int64_t(s.esize),
                  s.k_scales ? s.k_scales + b * s.scales_stride + row : nullptr);
      s.store_row(v, i * v.strides[0] + h * v.strides[1], s.Dv, s.v_block(b) + row * s.Dv * int64_t(s.esize),
                  s.v_scales ? s.v_scales + b * s.scales_stride + row : nullptr);
    }
  }
  seq.length = new_length;
}

int64_t KvCache::length(int64_t id) const { return s_->find(id).length; }

void KvCache::truncate(int64_t id, int64_t n) {
  State& s = *s_;
  State::Sequence& seq = s.find(id);
  if (n < 0 || n > seq.length)
    fail(ErrorKind::kInvalidArgument, "n", "", "in [0, " + to_string(seq.length) + "] (length of sequence " +
                                                   to_string(id) + ")",
         to_string(n));
  const int64_t keep = n / s.bs + (n % s.bs != 0);
  while (int64_t(seq.blocks.size()) > keep) {
    s.drop_block(seq.blocks.back());
    seq.blocks.pop_back();
  }
  seq.length = n;
}

int64_t KvCache::fork(int64_t id) {
  State& s = *s_;
  const State::Sequence& parent = s.find(id);
  const int64_t child = s.add_sequence(parent.length, parent.blocks);
  for (int32_t b : parent.blocks) ++s.refcount[size_t(b)];  // nothing below throws
  return child;
}

void KvCache::release(int64_t id) {
  State& s = *s_;
  State::Sequence& seq = s.find(id);
  for (int32_t b : seq.blocks) s.drop_block(b);
  s.sequences.erase(id);
}

void KvCache::reset() {
  s_->sequences.clear();
  s_->reset_free_list();
}

std::pair<Tensor, Tensor> KvCache::gather(int64_t id) const {
  const State& s = *s_;
  const State::Sequence& seq = s.find(id);
  const int64_t L = seq.length;
  Tensor k = Tensor::empty(DType::kF32, {L, s.Hkv, s.D});
  Tensor v = Tensor::empty(DType::kF32, {L, s.Hkv, s.Dv});
  float* ko = k.data_as<float>();
  float* vo = v.data_as<float>();
  for (int64_t t = 0; t < L; ++t) {
    const int32_t b = seq.blocks[size_t(t / s.bs)];
    const int64_t slot = t % s.bs;
    for (int64_t h = 0; h < s.Hkv; ++h) {
      const int64_t row = h * s.bs + slot;
      s.load_row(s.k_block(b) + row * s.D * int64_t(s.esize), s.k_scales ? s.k_scales[b * s.scales_stride + row] : 0.0f,
                 s.D, ko + (t * s.Hkv + h) * s.D);
      s.load_row(s.v_block(b) + row * s.Dv * int64_t(s.esize), s.v_scales ? s.v_scales[b * s.scales_stride + row] : 0.0f,
                 s.Dv, vo + (t * s.Hkv + h) * s.Dv);
    }
  }
  return {std::move(k), std::move(v)};
}

std::span<const int32_t> KvCache::block_table(int64_t id) const {
  const State::Sequence& seq = s_->find(id);
  return {seq.blocks.data(), seq.blocks.size()};
}

KvCacheLayout KvCache::layout() const {
  const State& s = *s_;
  KvCacheLayout l;
  l.dtype = s.options.dtype;
  l.num_kv_heads = s.Hkv, l.head_dim = s.D, l.v_head_dim = s.Dv;
  l.block_size = s.bs, l.num_blocks = s.num_blocks;
  l.k_blocks = s.k_base, l.v_blocks = s.v_base;
  l.k_block_bytes = s.k_block_bytes, l.v_block_bytes = s.v_block_bytes;
  l.k_scales = s.k_scales, l.v_scales = s.v_scales;
  l.scales_block_stride = s.scales_stride;
  return l;
}

const KvCacheOptions& KvCache::options() const { return s_->options; }
int64_t KvCache::num_sequences() const { return int64_t(s_->sequences.size()); }
int64_t KvCache::used_tokens() const {
  int64_t n = 0;
  for (const auto& [id, seq] : s_->sequences) n += seq.length;
  return n;
}
int64_t KvCache::capacity() const { return s_->num_blocks * s_->bs; }
int64_t KvCache::num_blocks() const { return s_->num_blocks; }
int64_t KvCache::num_free_blocks() const { return int64_t(s_->free_list.size()); }
size_t KvCache::nbytes() const { return s_->pool.nbytes(); }

}  // namespace multihead
