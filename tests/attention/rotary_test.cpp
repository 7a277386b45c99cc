// Rotary position embeddings against a float64 reference: the exact rule of the header
// (cos/sin rounded once to f32, each output rounded once) bit for bit, and the pure
// double rotation within rounding; both layouts, partial rotary, positions past 100k,
// strided and in-place calls, and every error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "multihead/attention.hpp"  // set_num_threads
#include "multihead/error.hpp"
#include "multihead/rotary.hpp"
#include "multihead/tensor.hpp"

namespace multihead {
namespace {

struct Problem {
  int64_t B, L, H, D;
  std::vector<float> x;         // dense (B, L, H, D)
  std::vector<int64_t> pos;     // (B, L)
};

Problem make_problem(uint64_t seed, int64_t B, int64_t L, int64_t H, int64_t D, int64_t max_pos) {
  std::mt19937_64 rng(seed);
  Problem p{B, L, H, D, std::vector<float>(size_t(B * L * H * D)), std::vector<int64_t>(size_t(B * L))};
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (float& v : p.x) v = normal(rng);
  for (int64_t& v : p.pos) v = std::uniform_int_distribution<int64_t>(0, max_pos)(rng);
  return p;
}

// The reference in double. exact_rule: cos/sin rounded to f32 first (the header's rule, so
// the f32 result must match bit for bit); otherwise the pure rotation.
std::vector<double> reference(const Problem& p, int64_t R, double base, bool interleaved, bool exact_rule) {
  std::vector<double> out(p.x.begin(), p.x.end());
  const int64_t half = R / 2;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t l = 0; l < p.L; ++l)
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double theta = double(p.pos[size_t(b * p.L + l)]) * std::pow(base, -double(2 * i) / double(R));
          double c = std::cos(theta), s = std::sin(theta);
          if (exact_rule) c = float(c), s = float(s);
          const int64_t o = ((b * p.L + l) * p.H + h) * p.D;
          const int64_t i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + half;
          const double a = p.x[size_t(o + i1)], bb = p.x[size_t(o + i2)];
          out[size_t(o + i1)] = a * c - bb * s;
          out[size_t(o + i2)] = bb * c + a * s;
        }
  return out;
}

std::vector<float> run(const Problem& p, const RotaryOptions& o, bool int64_positions = true, bool per_batch = true) {
  std::vector<float> out(p.x.size(), -1.0f);
  std::vector<int32_t> pos32(p.pos.begin(), p.pos.end());
  const TensorView x = TensorView::of(p.x.data(), {p.B, p.L, p.H, p.D});
  TensorView pos = int64_positions ? TensorView::of(p.pos.data(), {p.B, p.L}) : TensorView::of(pos32.data(), {p.B, p.L});
  if (!per_batch) {  // (L): the first batch's positions
    pos.rank = 1;
    pos.shape[0] = p.L;
    pos.strides[0] = 1;
  }
  apply_rotary(x, pos, TensorView::of(out.data(), {p.B, p.L, p.H, p.D}), o);
  return out;
}

void expect_matches(const Problem& p, const std::vector<float>& got, int64_t R, double base, bool interleaved) {
  const auto exact = reference(p, R, base, interleaved, true);
  const auto pure = reference(p, R, base, interleaved, false);
  for (size_t e = 0; e < got.size(); ++e) {
    ASSERT_EQ(got[e], float(exact[e])) << "element " << e;
    // Against the pure rotation: f32 cos/sin (2^-24 relative each) and the final rounding.
    const size_t row = e / size_t(p.D) * size_t(p.D);
    double mag = 0;
    for (int64_t d = 0; d < p.D; ++d) mag = std::max(mag, std::fabs(double(p.x[row + size_t(d)])));
    ASSERT_LE(std::fabs(got[e] - pure[e]), 2 * mag * 0x1p-24 + std::fabs(pure[e]) * 0x1p-24) << "element " << e;
  }
}

TEST(Rotary, BothLayoutsFullAndPartialMatchTheFloat64Reference) {
  uint64_t seed = 1;
  for (bool interleaved : {false, true})
    for (int64_t D : {2, 8, 64, 80})
      for (int64_t R : {D, D / 2 - (D / 2) % 2, int64_t(2)}) {
        if (R <= 0) continue;
        SCOPED_TRACE("seed " + std::to_string(seed) + " D " + std::to_string(D) + " R " + std::to_string(R) +
                     (interleaved ? " interleaved" : " half-split"));
        const Problem p = make_problem(seed++, 2, 5, 3, D, 200000);  // positions past 100k
        const auto got = run(p, {.rotary_dim = R, .base = 10000.0, .interleaved = interleaved});
        expect_matches(p, got, R, 10000.0, interleaved);
        // Features past rotary_dim pass through.
        for (size_t row = 0; row < got.size(); row += size_t(D))
          for (int64_t d = R; d < D; ++d) ASSERT_EQ(got[row + size_t(d)], p.x[row + size_t(d)]);
      }
}

// The two layouts differ (a test that mixed them up would notice) except where they
// coincide (rotary_dim 2).
TEST(Rotary, LayoutsAreNotInterchangeable) {
  const Problem p = make_problem(3, 1, 4, 2, 16, 1000);
  const auto neox = run(p, {.rotary_dim = 16});
  const auto gptj = run(p, {.rotary_dim = 16, .interleaved = true});
  EXPECT_NE(neox, gptj);
  const auto wrong = reference(p, 16, 10000.0, true, true);
  bool differs = false;
  for (size_t e = 0; e < neox.size(); ++e) differs |= neox[e] != float(wrong[e]);
  EXPECT_TRUE(differs);
}

TEST(Rotary, PositionsInt32Int64SharedOrPerBatchAndOtherBases) {
  Problem p = make_problem(7, 3, 6, 2, 32, 150000);
  const auto a = run(p, {.rotary_dim = 24, .base = 500000.0}, true);
  const auto b = run(p, {.rotary_dim = 24, .base = 500000.0}, false);
  EXPECT_EQ(a, b);
  expect_matches(p, a, 24, 500000.0, false);
  // (L) positions: every batch uses the same row.
  for (int64_t bi = 1; bi < p.B; ++bi)
    for (int64_t l = 0; l < p.L; ++l) p.pos[size_t(bi * p.L + l)] = p.pos[size_t(l)];
  const auto shared = run(p, {.rotary_dim = 24, .base = 500000.0}, true, false);
  expect_matches(p, shared, 24, 500000.0, false);
  // Large positions (int64 past 2^31).
  for (int64_t& v : p.pos) v += int64_t(3) << 31;
  expect_matches(p, run(p, {.rotary_dim = 32, .interleaved = true}), 32, 10000.0, true);
}

TEST(Rotary, InPlaceStridedAndBf16) {
  const Problem p = make_problem(11, 2, 3, 4, 16, 5000);
  const auto want = run(p, {.rotary_dim = 12});
  // In place.
  std::vector<float> x = p.x;
  const TensorView xv = TensorView::of(x.data(), {2, 3, 4, 16});
  apply_rotary(xv, TensorView::of(p.pos.data(), {2, 3}), xv, {.rotary_dim = 12});
  EXPECT_EQ(x, want);
  // Strided input and output: heads spread 20 apart, rows padded.
  std::vector<float> xs(size_t(2 * 3 * 90), 0.0f), os(size_t(2 * 3 * 90), 7.0f);
  TensorView sx;
  sx.data = xs.data(), sx.dtype = DType::kF32, sx.rank = 4;
  sx.shape = {2, 3, 4, 16};
  sx.strides = {270, 90, 20, 1};
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t l = 0; l < 3; ++l)
      for (int64_t h = 0; h < 4; ++h)
        for (int64_t d = 0; d < 16; ++d) xs[size_t(b * 270 + l * 90 + h * 20 + d)] = p.x[size_t(((b * 3 + l) * 4 + h) * 16 + d)];
  TensorView so = sx;
  so.data = os.data();
  apply_rotary(sx, TensorView::of(p.pos.data(), {2, 3}), so, {.rotary_dim = 12});
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t l = 0; l < 3; ++l)
      for (int64_t h = 0; h < 4; ++h)
        for (int64_t d = 0; d < 16; ++d)
          ASSERT_EQ(os[size_t(b * 270 + l * 90 + h * 20 + d)], want[size_t(((b * 3 + l) * 4 + h) * 16 + d)]);
  EXPECT_EQ(os[16], 7.0f);  // the gap between heads is not written
  // bf16 in and out: the f32 rule on the widened input, rounded to bf16 once more.
  std::vector<bf16> xb(p.x.size()), ob(p.x.size());
  Problem pb = p;
  for (size_t e = 0; e < p.x.size(); ++e) {
    xb[e] = float_to_bf16(p.x[e]);
    pb.x[e] = bf16_to_float(xb[e]);
  }
  apply_rotary(TensorView::of(xb.data(), {2, 3, 4, 16}), TensorView::of(p.pos.data(), {2, 3}),
               TensorView::of(ob.data(), {2, 3, 4, 16}), {.rotary_dim = 12});
  const auto exact = reference(pb, 12, 10000.0, false, true);
  for (size_t e = 0; e < ob.size(); ++e) ASSERT_EQ(ob[e].bits, float_to_bf16(float(exact[e])).bits) << e;
}

TEST(Rotary, ErrorsNameTheArgumentAndWriteNothing) {
  Problem p = make_problem(13, 1, 3, 2, 8, 100);
  std::vector<float> out(p.x.size(), 5.0f);
  const TensorView x = TensorView::of(p.x.data(), {1, 3, 2, 8});
  const TensorView o = TensorView::of(out.data(), {1, 3, 2, 8});
  TensorView pos = TensorView::of(p.pos.data(), {1, 3});
  auto check = [&](const std::function<void()>& f, ErrorKind kind, const std::string& tensor, const std::string& dim) {
    SCOPED_TRACE(tensor + " " + dim);
    try {
      f();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind) << e.what();
      EXPECT_EQ(e.tensor(), tensor) << e.what();
      EXPECT_EQ(e.dim(), dim) << e.what();
    }
    for (float v : out) ASSERT_EQ(v, 5.0f);
  };
  using K = ErrorKind;
  check([&] { apply_rotary(x, pos, o, {.rotary_dim = 0}); }, K::kInvalidArgument, "options.rotary_dim", "");
  check([&] { apply_rotary(x, pos, o, {.rotary_dim = 3}); }, K::kInvalidArgument, "options.rotary_dim", "");
  check([&] { apply_rotary(x, pos, o, {.rotary_dim = 10}); }, K::kInvalidArgument, "options.rotary_dim", "");
  check([&] { apply_rotary(x, pos, o, {.rotary_dim = 8, .base = 0.0}); }, K::kInvalidArgument, "options.base", "");
  check([&] { apply_rotary(x, pos, o, {.rotary_dim = 8, .base = std::nan("")}); }, K::kInvalidArgument, "options.base", "");
  p.pos[1] = -1;
  check([&] { apply_rotary(x, pos, o, {.rotary_dim = 8}); }, K::kInvalidArgument, "positions", "element (0, 1)");
  p.pos[1] = (int64_t(1) << 53) + 1;
  check([&] { apply_rotary(x, pos, o, {.rotary_dim = 8}); }, K::kInvalidArgument, "positions", "element (0, 1)");
  p.pos[1] = 4;
  std::vector<int32_t> neg = {0, -5, 1};
  check([&] { apply_rotary(x, TensorView::of(neg.data(), {3}), o, {.rotary_dim = 8}); }, K::kInvalidArgument,
        "positions", "element 1");
  std::vector<float> fpos = {0, 1, 2};
  check([&] { apply_rotary(x, TensorView::of(fpos.data(), {3}), o, {.rotary_dim = 8}); }, K::kInvalidArgument,
        "positions", "dtype");
  check([&] { apply_rotary(x, TensorView::of(p.pos.data(), {3, 1}), o, {.rotary_dim = 8}); }, K::kInvalidShape,
        "positions", "dim 0 (B)");
  check([&] { apply_rotary(x, TensorView::of(p.pos.data(), {2}), o, {.rotary_dim = 8}); }, K::kInvalidShape,
        "positions", "dim 0 (L)");
  check([&] { apply_rotary(x, TensorView::of(p.pos.data(), {1, 1, 3}), o, {.rotary_dim = 8}); }, K::kInvalidShape,
        "positions", "rank");
  check([&] { apply_rotary(x, pos, TensorView::of(out.data(), {1, 3, 2, 4}), {.rotary_dim = 4}); }, K::kInvalidShape,
        "out", "dim 3 (D)");
  check([&] { apply_rotary(TensorView::of(p.x.data(), {3, 2, 8}), pos, o, {.rotary_dim = 8}); }, K::kInvalidShape, "x",
        "rank");
  TensorView xf16 = x;
  xf16.dtype = DType::kF16;
  check([&] { apply_rotary(xf16, pos, o, {.rotary_dim = 8}); }, K::kInvalidArgument, "x", "dtype");
  // out overlapping x without being x.
  std::vector<float> shared(p.x.size() + 1, 5.0f);
  const TensorView xs = TensorView::of(shared.data(), {1, 3, 2, 8});
  const TensorView os = TensorView::of(shared.data() + 1, {1, 3, 2, 8});
  try {
    apply_rotary(xs, pos, os, {.rotary_dim = 8});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.tensor(), "out");
    EXPECT_EQ(e.dim(), "memory");
  }
  for (float v : shared) ASSERT_EQ(v, 5.0f);
  // Empty tensors are fine.
  apply_rotary(TensorView::of(p.x.data(), {0, 3, 2, 8}), TensorView::of(p.pos.data(), {0, 3}),
               TensorView::of(out.data(), {0, 3, 2, 8}), {.rotary_dim = 8});
}

TEST(Rotary, LargeCallsAreThreadCountIndependent) {
  const Problem p = make_problem(17, 4, 256, 8, 64, 300000);  // above the parallel threshold
  set_num_threads(1);
  const auto one = run(p, {.rotary_dim = 64});
  set_num_threads(3);
  const auto three = run(p, {.rotary_dim = 64});
  set_num_threads(0);
  EXPECT_EQ(one, three);
  expect_matches(p, three, 64, 10000.0, false);
}

}  // namespace
}  // namespace multihead
