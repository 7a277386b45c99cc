// The per-target copies of a test's kernel wrapper that this CPU runs, called directly
// (Highway's dispatch and MULTIHEAD_ISA stay untouched, so no global state changes).
//
// A test file compiles the same Highway targets as the library (src/CMakeLists.txt:
// AVX-512, AVX2 and the static baseline, HWY_SCALAR on x86-64) by defining
//   #define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_AVX3_DL)
// before <hwy/foreach_target.h>, defines one wrapper FN per target inside
// multihead::detail::HWY_NAMESPACE, and in its HWY_ONCE part includes this header and
// iterates MULTIHEAD_EACH_TARGET(FN): {name, function pointer} for each compiled target the
// CPU supports, best first.
#pragma once

#include <hwy/highway.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace multihead::test {

template <class Fn>
struct TargetFn {
  int64_t target;
  const char* name;
  Fn fn;
};

template <class Fn>
std::vector<TargetFn<Fn>> supported_only(std::initializer_list<TargetFn<Fn>> all) {
  std::vector<TargetFn<Fn>> out;
  const int64_t supported = hwy::SupportedTargets();
  for (const TargetFn<Fn>& t : all)
    if (t.target == HWY_STATIC_TARGET || (supported & t.target) != 0) out.push_back(t);
  return out;
}

}  // namespace multihead::test

#if HWY_TARGETS & HWY_AVX3
#define MULTIHEAD_TEST_TARGET_AVX3(FN) {HWY_AVX3, "avx512", &::multihead::detail::N_AVX3::FN},
#else
#define MULTIHEAD_TEST_TARGET_AVX3(FN)
#endif
#if HWY_TARGETS & HWY_AVX2
#define MULTIHEAD_TEST_TARGET_AVX2(FN) {HWY_AVX2, "avx2", &::multihead::detail::N_AVX2::FN},
#else
#define MULTIHEAD_TEST_TARGET_AVX2(FN)
#endif
#if HWY_TARGETS & HWY_SCALAR
#define MULTIHEAD_TEST_TARGET_SCALAR(FN) {HWY_SCALAR, "scalar", &::multihead::detail::N_SCALAR::FN},
#else
#define MULTIHEAD_TEST_TARGET_SCALAR(FN)
#endif
#if HWY_TARGETS & HWY_EMU128
#define MULTIHEAD_TEST_TARGET_EMU128(FN) {HWY_EMU128, "emu128", &::multihead::detail::N_EMU128::FN},
#else
#define MULTIHEAD_TEST_TARGET_EMU128(FN)
#endif

// Every compiled target of FN that the CPU supports, as a vector of TargetFn.
#define MULTIHEAD_EACH_TARGET(FN)                                                               \
  ::multihead::test::supported_only<decltype(&::multihead::detail::HWY_STATIC_DISPATCH(FN))>( \
      {MULTIHEAD_TEST_TARGET_AVX3(FN) MULTIHEAD_TEST_TARGET_AVX2(FN) MULTIHEAD_TEST_TARGET_SCALAR(FN)  \
           MULTIHEAD_TEST_TARGET_EMU128(FN)})
