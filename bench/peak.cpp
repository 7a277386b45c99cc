// Register-only FMA / vdpbf16ps loops and a streaming sum, each compiled for its ISA with
// target attributes and chosen by run-time CPU detection, so the library itself needs no
// -march flag.
#include "bench/peak.hpp"

#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <vector>

namespace multihead::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Independent accumulator chains: enough to cover FMA latency (4) times two FMA pipes.
constexpr int kChains = 16;

// Horizontal sum through memory (GCC 12's _mm512_reduce_add_ps warns under -Wall).
__attribute__((target("avx512f"))) float hsum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float total = 0;
  for (float x : lanes) total += x;
  return total;
}

// acc = acc * a + b converges to b / (1 - a) = 1: no overflow, no denormals.
__attribute__((target("avx512f"))) float fma_loop_avx512(int64_t iters) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(float(c));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  }
  __m512 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
  return hsum(s);
}

__attribute__((target("avx2,fma"))) float fma_loop_avx2(int64_t iters) {
  // 16 ymm registers: 12 chains leave room for the two constants.
  constexpr int kYmmChains = 12;
  __m256 acc[kYmmChains];
  for (int c = 0; c < kYmmChains; ++c) acc[c] = _mm256_set1_ps(float(c));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int c = 0; c < kYmmChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
  }
  float out[8], total = 0;
  for (int c = 0; c < kYmmChains; ++c) {
    _mm256_storeu_ps(out, acc[c]);
    for (float x : out) total += x;
  }
  return total;
}

float fma_loop_scalar(int64_t iters) {
  float acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = float(c);
  for (int64_t it = 0; it < iters; ++it)
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * 0.999f + 0.001f;
  float total = 0;
  for (float x : acc) total += x;
  return total;
}

// Each vdpbf16ps adds 32 bf16 products pairwise into 16 floats: 64 FLOPs.
__attribute__((target("avx512f,avx512bf16"))) float bf16_dot_loop(int64_t iters) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_setzero_ps();
  // 2^-10 * 2^-10 per pair: the sums stay far from overflow for any feasible iters.
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3a80);
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3a80);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  }
  __m512 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
  return hsum(s);
}

__attribute__((target("avx512f"))) float sum_avx512(const float* x, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_load_ps(x + i));
    s1 = _mm512_add_ps(s1, _mm512_load_ps(x + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_load_ps(x + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_load_ps(x + i + 48));
  }
  float total = hsum(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
  for (; i < n; ++i) total += x[i];
  return total;
}

__attribute__((target("avx2"))) float sum_avx2(const float* x, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_add_ps(s0, _mm256_load_ps(x + i));
    s1 = _mm256_add_ps(s1, _mm256_load_ps(x + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_load_ps(x + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_load_ps(x + i + 24));
  }
  float out[8], total = 0;
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (float v : out) total += v;
  for (; i < n; ++i) total += x[i];
  return total;
}

float sum_scalar(const float* x, int64_t n) {
  float s[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int c = 0; c < 8; ++c) s[c] += x[i + c];
  float total = 0;
  for (float v : s) total += v;
  for (; i < n; ++i) total += x[i];
  return total;
}

bool has_avx512() { return __builtin_cpu_supports("avx512f"); }
bool has_avx2_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool has_avx512_bf16() { return has_avx512() && __builtin_cpu_supports("avx512bf16"); }

volatile float g_sink;  // keeps the loops' results alive

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// FLOP/s of `loop` run on every thread at once, best of `repeats`; iterations are
// calibrated so that one run lasts about 0.2 s. Each thread's rate is taken over its
// own CPU time and the rates are summed: FMA units are per core, and on a shared machine
// wall time would count the time other processes held our cores.
template <class Loop>
double threaded_rate(int threads, int repeats, double flops_per_iter, Loop loop) {
  const auto run = [&](int64_t iters) {
    double rate = 0;
#pragma omp parallel num_threads(threads) reduction(+ : rate)
    {
      const double t0 = thread_cpu_seconds();
      g_sink = loop(iters);
      rate += flops_per_iter * double(iters) / std::max(thread_cpu_seconds() - t0, 1e-9);
    }
    return rate;
  };
  const auto wall = [&](int64_t iters) {
    const auto t0 = Clock::now();
    run(iters);
    return seconds_since(t0);
  };
  int64_t iters = 1 << 16;
  while (wall(iters) < 0.05) iters *= 4;  // also ramps the clock up
  iters = int64_t(double(iters) * 0.2 / std::max(wall(iters), 1e-6));
  double best = 0;
  for (int r = 0; r < repeats; ++r) best = std::max(best, run(iters));
  return best;
}

// Anonymous mapping, huge pages when the kernel grants them (first touch of 4 KiB
// pages is slow on this machine class), filled in parallel.
struct Mapping {
  explicit Mapping(size_t bytes) : bytes(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    madvise(p, bytes, MADV_HUGEPAGE);
    data = static_cast<float*>(p);
  }
  ~Mapping() {
    if (data) munmap(data, bytes);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  float* data = nullptr;
  size_t bytes;
};

double read_bandwidth(int threads, size_t bytes, int repeats) {
  const int64_t n = int64_t(bytes / sizeof(float)) / 64 * 64;
  Mapping buf(size_t(n) * sizeof(float));
  if (!buf.data) return 0;
  float* x = buf.data;
  // Same static partition as the reads: each thread faults in what it will read.
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = 1.0f;
  float (*sum)(const float*, int64_t) = has_avx512() ? sum_avx512 : has_avx2_fma() ? sum_avx2 : sum_scalar;
  double best = 0;
  for (int r = 0; r < repeats + 1; ++r) {  // the first pass warms TLBs and clocks
    const auto t0 = Clock::now();
    float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      // Chunks of whole 64-float blocks keep every thread's loads aligned.
      const int64_t blocks = n / 64, lo = blocks * t / nt * 64, hi = blocks * (t + 1) / nt * 64;
      total += sum(x + lo, hi - lo);
    }
    const double s = seconds_since(t0);
    g_sink = total;
    if (r > 0) best = std::max(best, double(n) * sizeof(float) / s);
  }
  return best;
}

}  // namespace

Peaks measure_peaks(int threads, size_t read_bytes, int repeats) {
  Peaks p;
  p.threads = threads;
  if (has_avx512()) {
    p.fp32_isa = "avx512f";
    p.fp32_gflops = threaded_rate(threads, repeats, 2.0 * 16 * kChains, fma_loop_avx512) * 1e-9;
  } else if (has_avx2_fma()) {
    p.fp32_isa = "avx2+fma";
    p.fp32_gflops = threaded_rate(threads, repeats, 2.0 * 8 * 12, fma_loop_avx2) * 1e-9;
  } else {
    p.fp32_isa = "scalar";
    p.fp32_gflops = threaded_rate(threads, repeats, 2.0 * kChains, fma_loop_scalar) * 1e-9;
  }
  if (has_avx512_bf16()) p.bf16_gflops = threaded_rate(threads, repeats, 64.0 * kChains, bf16_dot_loop) * 1e-9;
  p.read_bytes = read_bytes;
  p.read_gbps = read_bandwidth(threads, read_bytes, repeats) * 1e-9;
  return p;
}

void evict_caches() {
  // Larger than the L3 of one core complex many times over; written, so that dirty
  // lines of it (not the KV cache) are what the caches hold afterwards.
  static std::vector<char> buffer(size_t(256) << 20);
  static char value = 0;
  std::memset(buffer.data(), ++value, buffer.size());
}

std::string cpu_features() {
  std::string s;
  const auto add = [&](bool has, const char* name) {
    if (has) s += std::string(s.empty() ? "" : " ") + name;
  };
  add(__builtin_cpu_supports("avx2"), "avx2");
  add(__builtin_cpu_supports("fma"), "fma");
  add(has_avx512(), "avx512f");
  add(__builtin_cpu_supports("avx512bw"), "avx512bw");
  add(has_avx512_bf16(), "avx512bf16");
  return s;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown";
}

}  // namespace multihead::bench
