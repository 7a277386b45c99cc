// `multihead bench`: the speed cases (reference::speed_cases(), the module and a memory
// case) timed on this machine, each figure reported as a ratio measured in the same run
// (docs/BENCHMARKS.md): against the machine's peaks, the naive path (naive.hpp) and
// PyTorch (bench/torch_peer.py), and checked against the double-precision oracle on a
// sample so that a fast wrong kernel cannot look good. The harness is its own library
// (multihead_bench_harness), linked by the CLI.
#pragma once

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "bench/peak.hpp"

namespace multihead::bench {

struct BenchOptions {
  bool quick = false;              // the whole run under a minute
  std::vector<std::string> cases;  // groups "S1".."S5", "D1".."D3", "memory"; empty = all
  int threads = 0;                 // 0 = all cores; the same count goes to PyTorch
  bool peer = true;                // time PyTorch too (when /usr/bin/python3 has torch)
  int repeats = 0;                 // timed repeats per case; 0 = as many as fit the time budget
};

// The selectable case groups, in run order; a row id ("S2-bf16") selects one row.
const std::vector<std::string>& case_groups();
bool is_case_name(const std::string& name);

struct Row {
  std::string id;     // "S2-bf16"
  std::string title;  // "prefill fwd bf16"
  std::string shape;  // "B=1 L=2048 H=32 Hkv=8 D=128 causal"
  bool ran = false;   // false: unavailable, `note` says why
  double median_ms = 0, min_ms = 0, max_ms = 0;
  int repeats = 0;
  double flops = 0;         // per call (0 for bandwidth-bound rows)
  double bytes = 0;         // K and V bytes read per call (decode)
  std::string unit;         // "GFLOP/s" or "GB/s"
  double rate = 0;          // in unit, at the median
  std::string peak_name;    // "fp32 FMA", "bf16 dot", "read"
  std::optional<double> peak_fraction;
  std::optional<double> naive_ms;  // whole-shape time (scaled when naive_scaled)
  std::string naive_note;          // how it was obtained, or why absent
  std::optional<double> dense_ms;  // KV-cache rows: the same work through the functional API
  std::string dense_note;
  std::optional<double> torch_ms;
  std::string torch_note;
  std::optional<double> ort_ms;  // ONNX Runtime's GroupQueryAttention on the same work (D1-fp32)
  std::string ort_note;
  std::string check;               // "ok 0.12" (worst error / allowed), "FAIL ...", "n/a"
  bool check_pass = true;
  std::optional<double> rss_growth_mib;  // memory row: peak RSS growth of one call
  std::string note;
};

struct TorchInfo {
  bool available = false;
  std::string version, blas, openblas_config, error;
  int threads = 0;
};

struct BenchReport {
  BenchOptions options;
  int threads = 0;
  std::string cpu, features;
  std::string openblas_core;  // OpenBLAS core type this process runs (projections)
  Peaks peaks;
  std::vector<Row> rows;
  TorchInfo torch;
  bool pass() const;  // every check passed
};

// Progress lines go to `log` (stderr in the CLI) as cases finish.
BenchReport run_bench(const BenchOptions& options, std::FILE* log);
void print_report(const BenchReport& report, std::FILE* out);
void write_json(const BenchReport& report, const std::string& path);

// OpenBLAS picks its kernels when it is loaded, from OPENBLAS_CORETYPE; 0.3.21 does not
// know Zen 5 and falls back to Haswell (half speed). On an AVX-512 CPU whose environment
// names another core type, this re-executes the program with OPENBLAS_CORETYPE=SkylakeX
// (once; a marker variable prevents loops). Returns only when no re-exec happened.
void reexec_with_openblas_coretype();

}  // namespace multihead::bench
