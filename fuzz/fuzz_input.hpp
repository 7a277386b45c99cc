// What every fuzz target reads its input with: bytes taken in order, 0 once they run out
// (so a truncated input still decodes to something), and the one way a target reports a
// broken promise (abort, which libFuzzer records as a crash with the input).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace fuzz {

[[noreturn]] inline void fail(const char* target, const char* what) {
  std::fprintf(stderr, "%s: %s\n", target, what);
  std::abort();
}

struct Bytes {
  const uint8_t* p;
  size_t n;
  uint8_t next() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  uint16_t next16() { return uint16_t(next() | next() << 8); }
  uint32_t next32() { return uint32_t(next16()) | uint32_t(next16()) << 16; }
  uint64_t next64() { return uint64_t(next32()) | uint64_t(next32()) << 32; }
  float next_float() {  // any bit pattern: NaN, inf and subnormals included
    const uint32_t bits = next32();
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  // One of the table's entries; byte 0 picks the first (inputs that run out stay valid).
  template <class T, size_t N>
  T pick(const T (&table)[N]) {
    return table[next() % N];
  }
};

}  // namespace fuzz
