// Rejected calls of attention over the cache: each throws a typed multihead::Error naming
// the argument and leaves the whole pool, the cache's bookkeeping and the outputs byte for
// byte as they were (the k_new append is checked in full before anything is stored).
#include <functional>

#include "attention/cached_support.hpp"

namespace multihead {
namespace {

using cached_test::CachedCase;
using cached_test::Fixture;

struct Snapshot {
  std::vector<unsigned char> pool;
  std::vector<int64_t> lengths;
  std::vector<std::vector<int32_t>> tables;
  int64_t free_blocks = 0;
  bool operator==(const Snapshot&) const = default;
};

Snapshot snapshot(const Fixture& f) {
  Snapshot s;
  const auto* p = reinterpret_cast<const unsigned char*>(f.cache.layout().k_blocks);
  s.pool.assign(p, p + f.cache.nbytes());
  for (int64_t id : f.ids) {
    s.lengths.push_back(f.cache.length(id));
    const auto t = f.cache.block_table(id);
    s.tables.emplace_back(t.begin(), t.end());
  }
  s.free_blocks = f.cache.num_free_blocks();
  return s;
}

// Runs a call that must fail with `kind` naming `tensor`; nothing may change.
void expect_rejected(Fixture& f, ErrorKind kind, const std::string& tensor,
                     const std::function<void(Fixture&, const ForwardOutputs&)>& call) {
  SCOPED_TRACE("expected " + std::string(to_string(kind)) + " naming " + tensor);
  const int64_t B = int64_t(f.ids.size()), Lq = f.q.size(1), H = f.q.size(2);
  Tensor out = Tensor::zeros(DType::kF32, {B, Lq, H, f.cache.options().v_head_dim.value()});
  Tensor lse = Tensor::zeros(DType::kF32, {B, H, Lq});
  const Snapshot before = snapshot(f);
  try {
    call(f, ForwardOutputs{out.view(), lse.view()});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_EQ(e.tensor(), tensor) << e.what();
  }
  EXPECT_TRUE(snapshot(f) == before) << "the cache changed";
  for (int64_t e = 0; e < out.numel(); ++e) ASSERT_EQ(out.data_as<float>()[e], 0.0f) << "out changed";
  for (int64_t e = 0; e < lse.numel(); ++e) ASSERT_EQ(lse.data_as<float>()[e], 0.0f) << "lse changed";
}

CachedCase append_case(KvCacheDType dtype) {
  CachedCase c;
  c.dtype = dtype, c.H = 4, c.Hkv = 2, c.D = 16, c.Dv = 16, c.Lq = 3, c.lengths = {20, 7}, c.append = true;
  c.seed = 77;
  return c;
}

TEST(CachedAttentionErrors, OptionsWithNoMeaningOverACacheNameTheOption) {
  Fixture f(append_case(KvCacheDType::kF32));
  Tensor mask = Tensor::zeros(DType::kBool, {1});
  Tensor bias = Tensor::zeros(DType::kF32, {1});
  Tensor lens = Tensor::zeros(DType::kI32, {2});
  Tensor cu = Tensor::zeros(DType::kI32, {3});
  const auto with = [&](const char* name, ErrorKind kind, const std::function<void(AttentionOptions&)>& set) {
    expect_rejected(f, kind, name, [&](Fixture& x, const ForwardOutputs& outs) {
      AttentionOptions o = x.options;
      set(o);
      attention_forward_cached(x.q.view(), x.cache, x.ids, outs, o, x.inputs);
    });
  };
  with("options.mask", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.mask = mask.view(); });
  with("options.bias", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.bias = bias.view(); });
  with("options.seqlens_k", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.seqlens_k = lens.view(); });
  with("options.cu_seqlens_q", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.cu_seqlens_q = cu.view(); });
  with("options.cu_seqlens_k", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.cu_seqlens_k = cu.view(); });
  with("options.dropout_p", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.dropout_p = 0.1f; });
  with("options.causal", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.causal = CausalAlign::kTopLeft; });
  with("options.scale", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.scale = 0.0f; });
  with("options.softcap", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.softcap = -1.0f; });
  with("options.window", ErrorKind::kInvalidArgument, [&](AttentionOptions& o) { o.window.left = -2; });
  Tensor probs = Tensor::zeros(DType::kF32, {2, 4, 3, 30});
  expect_rejected(f, ErrorKind::kInvalidArgument, "probs", [&](Fixture& x, ForwardOutputs outs) {
    outs.probs = probs.view();
    attention_forward_cached(x.q.view(), x.cache, x.ids, outs, x.options, x.inputs);
  });
  Tensor sinks = Tensor::zeros(DType::kF32, {3});
  expect_rejected(f, ErrorKind::kInvalidShape, "sinks", [&](Fixture& x, const ForwardOutputs& outs) {
    AttentionOptions o = x.options;
    o.sinks = sinks.view();
    attention_forward_cached(x.q.view(), x.cache, x.ids, outs, o, x.inputs);
  });
}

TEST(CachedAttentionErrors, BadShapesIdsAndInputsChangeNothing) {
  for (KvCacheDType dtype : {KvCacheDType::kF32, KvCacheDType::kBF16, KvCacheDType::kI8}) {
    Fixture f(append_case(dtype));
    const auto call = [](Fixture& x, const ForwardOutputs& outs) {
      attention_forward_cached(x.q.view(), x.cache, x.ids, outs, x.options, x.inputs);
    };
    // q's D differs from the cache's head_dim; q's H is no multiple of Hkv.
    Tensor q_bad_d = Tensor::zeros(DType::kF32, {2, 3, 4, 8});
    expect_rejected(f, ErrorKind::kInvalidShape, "q", [&](Fixture& x, const ForwardOutputs& outs) {
      attention_forward_cached(q_bad_d.view(), x.cache, x.ids, outs, x.options, x.inputs);
    });
    Tensor q_bad_h = Tensor::zeros(DType::kF32, {2, 3, 3, 16});
    expect_rejected(f, ErrorKind::kInvalidShape, "q", [&](Fixture& x, const ForwardOutputs& outs) {
      attention_forward_cached(q_bad_h.view(), x.cache, x.ids, outs, x.options, x.inputs);
    });
    // A dead id, too few ids, an id twice with k_new.
    expect_rejected(f, ErrorKind::kInvalidArgument, "id", [&](Fixture& x, const ForwardOutputs& outs) {
      const int64_t ids[] = {x.ids[0], 999};
      attention_forward_cached(x.q.view(), x.cache, ids, outs, x.options, x.inputs);
    });
    expect_rejected(f, ErrorKind::kInvalidShape, "seqs", [&](Fixture& x, const ForwardOutputs& outs) {
      attention_forward_cached(x.q.view(), x.cache, std::span<const int64_t>(x.ids).first(1), outs, x.options, x.inputs);
    });
    expect_rejected(f, ErrorKind::kInvalidArgument, "seqs", [&](Fixture& x, const ForwardOutputs& outs) {
      const int64_t ids[] = {x.ids[1], x.ids[1]};
      attention_forward_cached(x.q.view(), x.cache, ids, outs, x.options, x.inputs);
    });
    // k_new without v_new; k_new of the wrong length; v_new of the wrong head dim.
    expect_rejected(f, ErrorKind::kInvalidArgument, "v_new", [&](Fixture& x, const ForwardOutputs& outs) {
      CachedAttentionInputs in = x.inputs;
      in.v_new.reset();
      attention_forward_cached(x.q.view(), x.cache, x.ids, outs, x.options, in);
    });
    Tensor k_short = Tensor::zeros(DType::kF32, {2, 2, 2, 16});
    expect_rejected(f, ErrorKind::kInvalidShape, "k_new", [&](Fixture& x, const ForwardOutputs& outs) {
      CachedAttentionInputs in = x.inputs;
      in.k_new = k_short.view();
      attention_forward_cached(x.q.view(), x.cache, x.ids, outs, x.options, in);
    });
    Tensor v_bad = Tensor::zeros(DType::kF32, {2, 3, 2, 15});
    expect_rejected(f, ErrorKind::kInvalidShape, "v_new", [&](Fixture& x, const ForwardOutputs& outs) {
      CachedAttentionInputs in = x.inputs;
      in.v_new = v_bad.view();
      attention_forward_cached(x.q.view(), x.cache, x.ids, outs, x.options, in);
    });
    // Rotary: odd rotary_dim.
    expect_rejected(f, ErrorKind::kInvalidArgument, "rotary_dim", [&](Fixture& x, const ForwardOutputs& outs) {
      CachedAttentionInputs in = x.inputs;
      in.rotary_dim = 3;
      attention_forward_cached(x.q.view(), x.cache, x.ids, outs, x.options, in);
    });
    // out overlapping q.
    expect_rejected(f, ErrorKind::kInvalidArgument, "out", [&](Fixture& x, ForwardOutputs outs) {
      outs.out = x.q.view();
      attention_forward_cached(x.q.view(), x.cache, x.ids, outs, x.options, x.inputs);
    });
    // The second sequence's k_new holds a NaN: an int8 cache cannot store it, and the
    // first sequence's tokens must not be appended either.
    if (dtype == KvCacheDType::kI8) {
      f.k_new.data_as<float>()[f.k_new.numel() - 1] = std::nanf("");
      expect_rejected(f, ErrorKind::kInvalidArgument, "k_new", call);
    }
  }
}

// Every sequence fits alone, not together: nothing is appended to any.
TEST(CachedAttentionErrors, BlocksOfAllAppendsAreCountedTogether) {
  for (KvCacheDType dtype : {KvCacheDType::kF32, KvCacheDType::kI8}) {
    CachedCase c = append_case(dtype);
    c.block_size = 4, c.lengths = {4, 4};
    Fixture f(c);
    // Take every free block but one: each append of 3 tokens needs one new block.
    const int64_t hog = f.cache.new_sequence();
    const int64_t spare = f.cache.num_free_blocks() - 1;
    Tensor k = Tensor::zeros(DType::kF32, {spare * 4, 2, 16}), v = Tensor::zeros(DType::kF32, {spare * 4, 2, 16});
    f.cache.append(hog, k.view(), v.view());
    ASSERT_EQ(f.cache.num_free_blocks(), 1);
    expect_rejected(f, ErrorKind::kCapacityExceeded, "KvCache", [](Fixture& x, const ForwardOutputs& outs) {
      attention_forward_cached(x.q.view(), x.cache, x.ids, outs, x.options, x.inputs);
    });
  }
}

// Forks sharing a partly filled block: the first append copies it, after which the second
// owns it alone and appends in place, so the call needs one block, not two.
TEST(CachedAttentionErrors, CopyOnWriteOfSharedBlockCountedOnce) {
  KvCache cache(KvCacheOptions{.num_kv_heads = 1, .head_dim = 4, .capacity = 12, .block_size = 4});
  const int64_t a = cache.new_sequence();
  Tensor k = Tensor::zeros(DType::kF32, {6, 1, 4});
  cache.append(a, k.view(), k.view());  // blocks: one full, one with 2 tokens
  const int64_t b = cache.fork(a);
  ASSERT_EQ(cache.num_free_blocks(), 1);
  Tensor q = Tensor::zeros(DType::kF32, {2, 1, 1, 4});
  Tensor kn = Tensor::zeros(DType::kF32, {2, 1, 1, 4});
  CachedAttentionInputs in;
  in.k_new = kn.view(), in.v_new = kn.view();
  const int64_t ids[] = {a, b};
  attention_forward_cached(q.view(), cache, ids, AttentionOptions{}, in);
  EXPECT_EQ(cache.length(a), 7);
  EXPECT_EQ(cache.length(b), 7);
  EXPECT_EQ(cache.num_free_blocks(), 0);
}

}  // namespace
}  // namespace multihead
