// Portable random draws for the case generators: the same numbers with any standard
// library (std:: distributions differ), so a printed seed replays anywhere.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <random>

#include "core/random.hpp"

namespace multihead::reference::draws {

inline double uniform01(std::mt19937_64& rng) { return detail::uniform01(rng()); }
inline int64_t uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // inclusive
  return lo + int64_t(rng() % uint64_t(hi - lo + 1));
}
inline bool chance(std::mt19937_64& rng, double p) { return uniform01(rng) < p; }
template <class T>
T pick(std::mt19937_64& rng, std::initializer_list<T> values) {
  return values.begin()[uniform(rng, 0, int64_t(values.size()) - 1)];
}
inline double normal(std::mt19937_64& rng) {
  const double u1 = 1.0 - uniform01(rng);  // (0, 1]
  const double u2 = uniform01(rng);
  return detail::box_muller(u1, u2).first;
}

}  // namespace multihead::reference::draws
