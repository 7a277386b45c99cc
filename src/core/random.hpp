// Portable random numbers, the one home of the generators the library, the check library
// and the tests share: the same bits on every platform and standard library (std::
// distributions differ between implementations), so seeds replay anywhere.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

namespace multihead::detail {

inline constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;

// splitmix64's output function of the state after one step: splitmix64(x) is the draw of
// a stream whose state was x. Also a good 64-bit hash of a counter.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The splitmix64 stream: next() is splitmix64(state), then the state steps by the gamma.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t next() {
    const uint64_t z = splitmix64(state_);
    state_ += kGoldenGamma;
    return z;
  }

 private:
  uint64_t state_;
};

// The top 53 bits as a double in [0, 1).
inline double uniform01(uint64_t bits) { return double(bits >> 11) * 0x1.0p-53; }

// Box-Muller: two independent N(0, 1) values from u1 in (0, 1] and u2 in [0, 1).
struct NormalPair {
  double first, second;
};
inline NormalPair box_muller(double u1, double u2) {
  const double radius = std::sqrt(-2.0 * std::log(u1));
  const double angle = 2.0 * std::numbers::pi * u2;
  return {radius * std::cos(angle), radius * std::sin(angle)};
}

}  // namespace multihead::detail
