// Decode-shaped calls (a few queries, many keys): the SIMD decode path and its key
// splits merged by LSE, judged by the oracle and by determinism across thread counts.
#include <gtest/gtest.h>

#include <cstring>

#include "multihead/multihead.hpp"
#include "reference/cases.hpp"

namespace multihead {
namespace {

using reference::Case;

Case decode_case(int64_t Lq, int64_t Lk, int64_t H, int64_t Hkv, int64_t D, uint64_t seed) {
  Case c;
  c.kind = reference::CaseKind::kCausalBottomRight;
  c.B = 1, c.Lq = Lq, c.Lk = Lk, c.H = H, c.Hkv = Hkv, c.D = c.Dv = D;
  c.causal = CausalAlign::kBottomRight;
  c.seed = seed;
  return c;
}

// B·H < 16 pairs: the plan splits the keys (Lk / 512 chunks).
TEST(Decode, SplitKeysMatchOracle) {
  for (Case c : {decode_case(1, 3000, 4, 1, 128, 1), decode_case(3, 1500, 2, 2, 64, 2),
                 decode_case(1, 2049, 8, 2, 80, 3), decode_case(4, 4096, 4, 4, 32, 4)}) {
    for (bool sinks : {false, true}) {
      c.sinks = sinks;
      const reference::CaseResult r = reference::run_case(c, /*backward=*/true);
      EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report();
    }
  }
}

TEST(Decode, SplitKeysWithPaddingWindowAndBf16MatchOracle) {
  Case c = decode_case(1, 2500, 4, 2, 64, 5);
  c.key_padding = true;
  c.window = {700, -1};
  EXPECT_TRUE(reference::run_case(c, true).pass()) << c.describe();
  c = decode_case(2, 3000, 4, 1, 128, 6);
  c.dtype = DType::kBF16;
  EXPECT_TRUE(reference::run_case(c, true).pass()) << c.describe();
}

// A unit covers every kv head of a key chunk: each tile of K and V (all heads) is streamed
// into the caches, then each head scores, softmaxes and adds P·V (masked tiles packed).
TEST(Decode, SplitKeysAcrossKvHeadsBf16AndF32WithMasksMatchOracle) {
  for (DType dtype : {DType::kBF16, DType::kF32})
    for (bool masked : {false, true}) {
      Case c = decode_case(2, 2600, 8, 4, 64, 9);
      c.dtype = dtype;
      if (masked) c.key_padding = true, c.window = {900, -1};
      EXPECT_TRUE(reference::run_case(c, true).pass()) << c.describe();
    }
}

// bf16 decode scores run on vdpbf16ps where the CPU has it: K read under a mask at any D
// (odd, not a multiple of 32), blocks of 1, 2 and 4 rows (group x queries), split and
// unsplit keys; probabilities and the backward score the same way.
TEST(Decode, Bf16ScoresOnDotProductsMatchOracleForEveryHeadDimAndRowBlock) {
  struct Shape { int64_t Lq, Lk, H, Hkv, D; };
  const Shape shapes[] = {{1, 700, 4, 4, 1}, {1, 1100, 4, 2, 8}, {1, 1100, 4, 1, 31}, {3, 900, 4, 2, 59},
                          {2, 1300, 2, 1, 80}, {1, 1030, 8, 2, 111}, {4, 600, 4, 4, 256}, {1, 2048, 8, 8, 128}};
  uint64_t seed = 20;
  for (const Shape& x : shapes) {
    Case c = decode_case(x.Lq, x.Lk, x.H, x.Hkv, x.D, seed++);
    c.dtype = DType::kBF16;
    c.probs = true;
    const reference::CaseResult r = reference::run_case(c, /*backward=*/true);
    EXPECT_TRUE(r.pass()) << c.describe() << "\n" << r.report();
  }
}

// Strided and unaligned K/V views on the decode path.
TEST(Decode, StridedViewsMatchOracle) {
  for (reference::Layout layout : {reference::Layout::kPadded, reference::Layout::kHeadMajor}) {
    Case c = decode_case(2, 2100, 4, 2, 128, 8);
    c.layout = layout;
    EXPECT_TRUE(reference::run_case(c, true).pass()) << c.describe();
  }
}

// f32 with one kv head, and bf16 with two (a unit then covers both heads of a chunk).
TEST(Decode, SplitKeysBitwiseIdenticalForOneAndTwoThreads) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Case c = dtype == DType::kF32 ? decode_case(1, 4000, 2, 1, 128, 7) : decode_case(1, 4000, 8, 2, 128, 7);
    c.dtype = dtype;
    const reference::CaseInputs in = reference::materialize(c);
    AttentionResult runs[2];
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      runs[threads - 1] = attention_forward(in.q.view, in.k.view, in.v.view, in.options);
    }
    set_num_threads(0);
    EXPECT_EQ(std::memcmp(runs[0].out.data(), runs[1].out.data(), runs[0].out.nbytes()), 0) << c.describe();
    EXPECT_EQ(std::memcmp(runs[0].lse.data(), runs[1].lse.data(), runs[0].lse.nbytes()), 0) << c.describe();
  }
}

}  // namespace
}  // namespace multihead
