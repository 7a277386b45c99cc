// This machine's ceilings, measured in the benchmark's own run (docs/BENCHMARKS.md):
// fp32 FMA and bf16 dot throughput from register-only loops on every thread,
// and read bandwidth from a sum over a buffer far larger than the caches.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace multihead::bench {

struct Peaks {
  double fp32_gflops = 0;              // FMA: 2 FLOPs per lane
  std::string fp32_isa;                // "avx512f", "avx2+fma" or "scalar"
  std::optional<double> bf16_gflops;   // vdpbf16ps: 2 FLOPs per bf16 pair; none without avx512bf16
  double read_gbps = 0;                // 1e9 bytes per second
  size_t read_bytes = 0;               // size of the buffer it was measured on
  int threads = 0;
};

// Best of `repeats` runs each (a peak is the best the machine did, not the typical).
// FMA and bf16 rates are per-thread CPU time summed over threads (robust to other
// processes on a shared machine); bandwidth is wall time (a shared resource).
Peaks measure_peaks(int threads, size_t read_bytes, int repeats);

// Writes a buffer several times the last-level cache, so that the next read of
// anything else comes from DRAM (decode reads a KV cache that other layers evicted).
void evict_caches();

// "avx512f avx512bf16 ..." as detected at run time (for the report).
std::string cpu_features();
std::string cpu_model();

}  // namespace multihead::bench
