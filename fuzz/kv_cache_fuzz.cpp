// libFuzzer target: operation sequences on a small KvCache, decoded from arbitrary bytes
// (new, append of any token count with any float bits, truncate, fork, release, reset,
// gather, on live, dead and made-up ids). The only acceptable failure is a multihead::Error,
// and a call that throws must leave the pool and every sequence as they were. Lengths are
// checked against a model after every call; so are the contents where the cache stores
// values exactly (f32: bit for bit), and in every dtype a call never changes a sequence it
// does not name (forks share blocks: copy-on-write must hold).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <vector>

#include "multihead/error.hpp"
#include "multihead/kv_cache.hpp"

#include "fuzz_input.hpp"

using namespace multihead;

namespace {

[[noreturn]] void fail(const char* what) { fuzz::fail("kv_cache_fuzz", what); }

using fuzz::Bytes;

// Everything a failed call must leave as it was: the pool's bytes, and each id's length
// and gathered contents.
struct Snapshot {
  std::vector<uint8_t> pool;
  std::map<int64_t, std::vector<uint8_t>> contents;
  bool operator==(const Snapshot&) const = default;
};

std::vector<uint8_t> gathered(const KvCache& c, int64_t id) {
  const auto [k, v] = c.gather(id);
  std::vector<uint8_t> bytes(k.nbytes() + v.nbytes());
  if (k.nbytes()) std::memcpy(bytes.data(), k.data(), k.nbytes());
  if (v.nbytes()) std::memcpy(bytes.data() + k.nbytes(), v.data(), v.nbytes());
  return bytes;
}

Snapshot snapshot(const KvCache& c, const std::map<int64_t, int64_t>& live) {
  Snapshot s;
  const KvCacheLayout l = c.layout();
  const size_t k_bytes = size_t(l.num_blocks * l.k_block_bytes), v_bytes = size_t(l.num_blocks * l.v_block_bytes);
  s.pool.assign(reinterpret_cast<const uint8_t*>(l.k_blocks), reinterpret_cast<const uint8_t*>(l.k_blocks) + k_bytes);
  s.pool.insert(s.pool.end(), reinterpret_cast<const uint8_t*>(l.v_blocks),
                reinterpret_cast<const uint8_t*>(l.v_blocks) + v_bytes);
  for (const auto& [id, len] : live) s.contents[id] = gathered(c, id);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in{data, size};
  KvCacheOptions o;
  const uint8_t config = in.next();
  o.dtype = KvCacheDType(config % 3);
  o.num_kv_heads = 1 + (config >> 2) % 2;
  o.head_dim = 1 + (config >> 3) % 4;
  o.v_head_dim = 1 + (config >> 5) % 3;
  o.block_size = int64_t(1) << (in.next() % 4);
  o.capacity = 1 + in.next() % 48;
  KvCache cache(o);
  const int64_t Hkv = o.num_kv_heads, D = o.head_dim, Dv = *o.v_head_dim;

  std::map<int64_t, int64_t> live;                  // id -> length (the model)
  std::map<int64_t, std::vector<float>> k_rows, v_rows;  // f32 caches: the rows appended
  int64_t last_id = 0;
  for (int step = 0; step < 64 && in.n > 0; ++step) {
    const uint8_t op = in.next();
    // An id: a live one, the last one made, or any small number (released or never made).
    int64_t id = int64_t(in.next() % 8) - 1;
    if (op & 0x80 && !live.empty()) id = std::next(live.begin(), in.next() % live.size())->first;
    if (op & 0x40) id = last_id;
    const Snapshot before = snapshot(cache, live);
    std::map<int64_t, int64_t> expected = live;
    bool changes_contents_of_id = false;  // the call may change `id`'s rows (only its own)
    try {
      switch (op % 7) {
        case 0: {
          const int64_t made = cache.new_sequence();
          if (live.count(made)) fail("new_sequence returned a live id");
          expected[made] = 0, last_id = made;
          k_rows[made].clear(), v_rows[made].clear();
          break;
        }
        case 1: {  // append n tokens of arbitrary bits (int8 rejects non-finite values)
          const int64_t n = in.next() % 6;
          Tensor k = Tensor::empty(DType::kF32, {n, Hkv, D}), v = Tensor::empty(DType::kF32, {n, Hkv, Dv});
          for (int64_t i = 0; i < k.numel(); ++i) k.data_as<float>()[i] = in.next_float();
          for (int64_t i = 0; i < v.numel(); ++i) v.data_as<float>()[i] = in.next_float();
          changes_contents_of_id = true;
          cache.append(id, k.view(), v.view());
          if (!live.count(id)) fail("append to a dead id succeeded");
          expected[id] += n;
          k_rows[id].insert(k_rows[id].end(), k.data_as<float>(), k.data_as<float>() + k.numel());
          v_rows[id].insert(v_rows[id].end(), v.data_as<float>(), v.data_as<float>() + v.numel());
          break;
        }
        case 2: {
          const int64_t n = int64_t(in.next() % 10) - 1;
          changes_contents_of_id = true;
          cache.truncate(id, n);
          if (!live.count(id) || n < 0 || n > live[id]) fail("a bad truncate succeeded");
          expected[id] = n;
          k_rows[id].resize(size_t(n * Hkv * D)), v_rows[id].resize(size_t(n * Hkv * Dv));
          break;
        }
        case 3: {
          const int64_t child = cache.fork(id);
          if (!live.count(id) || live.count(child)) fail("fork of a dead id, or to a live id");
          expected[child] = live[id], last_id = child;
          k_rows[child] = k_rows[id], v_rows[child] = v_rows[id];
          break;
        }
        case 4:
          cache.release(id);
          if (!live.count(id)) fail("release of a dead id succeeded");
          expected.erase(id);
          break;
        case 5:
          if (in.next() % 8 == 0) {  // rarely: reset drops everything
            cache.reset();
            expected.clear();
          }
          break;
        default: {
          const int64_t len = cache.length(id);
          if (!live.count(id) || len != live[id]) fail("length of a dead id, or differing from the model");
          break;
        }
      }
    } catch (const Error&) {
      if (!(snapshot(cache, live) == before)) fail("a failed call changed the cache");
      continue;
    }
    live = expected;
    const Snapshot after = snapshot(cache, live);
    for (const auto& [sid, len] : live) {
      if (cache.length(sid) != len) fail("length differs from the model");
      if (!(changes_contents_of_id && sid == id) && before.contents.count(sid) &&
          after.contents.at(sid) != before.contents.at(sid))
        fail("a call changed a sequence it does not name");
      if (o.dtype == KvCacheDType::kF32) {  // stored exactly: the gathered bits are the appended bits
        std::vector<uint8_t> want(k_rows[sid].size() * 4 + v_rows[sid].size() * 4);
        if (!k_rows[sid].empty()) std::memcpy(want.data(), k_rows[sid].data(), k_rows[sid].size() * 4);
        if (!v_rows[sid].empty()) std::memcpy(want.data() + k_rows[sid].size() * 4, v_rows[sid].data(), v_rows[sid].size() * 4);
        if (after.contents.at(sid) != want) fail("f32 contents differ from what was appended");
      }
    }
    // Blocks: never more in use than the sequences' tables hold (shared ones count once),
    // none leaked once every sequence is gone.
    int64_t referenced = 0, used = 0;
    for (const auto& [sid, len] : live) referenced += int64_t(cache.block_table(sid).size()), used += len;
    const int64_t in_use = cache.num_blocks() - cache.num_free_blocks();
    if (in_use < 0 || in_use > referenced) fail("blocks in use that no sequence holds");
    if (cache.used_tokens() != used) fail("used_tokens differs from the sum of lengths");
  }
  return 0;
}
