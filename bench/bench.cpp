#include "bench/bench.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "bench/harness.hpp"
#include "multihead/attention.hpp"

extern "C" char* openblas_get_corename(void);

namespace multihead::bench {

namespace {

bool selected(const BenchOptions& o, const std::string& group, const std::string& id) {
  return o.cases.empty() || std::find(o.cases.begin(), o.cases.end(), group) != o.cases.end() ||
         std::find(o.cases.begin(), o.cases.end(), id) != o.cases.end();
}

}  // namespace

const std::vector<std::string>& case_groups() {
  static const std::vector<std::string> groups{"S1", "S2", "S3", "S4", "S5", "D1", "D2", "D3", "memory"};
  return groups;
}

bool is_case_name(const std::string& name) {
  const auto& groups = case_groups();
  if (std::find(groups.begin(), groups.end(), name) != groups.end()) return true;
  for (const reference::SpeedCase& c : reference::speed_cases())
    if (c.id == name) return true;
  for (const CachedCase& c : cached_cases())
    if (c.id == name) return true;
  return false;
}

bool BenchReport::pass() const {
  return std::all_of(rows.begin(), rows.end(), [](const Row& r) { return r.check_pass; });
}

BenchReport run_bench(const BenchOptions& options, std::FILE* log) {
  BenchReport report;
  report.options = options;
  report.threads = options.threads > 0 ? options.threads : get_num_threads();
  set_num_threads(report.threads);
  const int threads = report.threads;
  const Budget budget = budget_for(options);
  report.cpu = cpu_model();
  report.features = cpu_features();
  report.openblas_core = openblas_get_corename();

  std::fprintf(log, "measuring peaks (%d threads)...\n", threads);
  report.peaks = measure_peaks(threads, options.quick ? size_t(256) << 20 : size_t(1) << 30, options.quick ? 2 : 5);
  const auto done = [&](const Row& row) {
    std::fprintf(log, "  %-8s %10.3f ms  check %s\n", row.id.c_str(), row.median_ms, row.check.c_str());
    std::fflush(log);
  };
  if (selected(options, "memory", "memory")) {
    std::fprintf(log, "memory case (L=%lld)...\n", (long long)budget.memory_L);
    report.rows.push_back(run_memory_case(budget, report.peaks));
    done(report.rows.back());
  }
  std::vector<reference::SpeedCase> ran;
  for (const reference::SpeedCase& c : reference::speed_cases()) {
    if (!selected(options, c.group, c.id)) continue;
    std::fprintf(log, "%s %s...\n", c.id.c_str(), shape_text(c.problem).c_str());
    report.rows.push_back(run_attention_case(c, budget, report.peaks, threads));
    ran.push_back(c);
    done(report.rows.back());
  }
  const bool module = selected(options, "S5", "S5");
  if (module) {
    std::fprintf(log, "S5 module...\n");
    report.rows.push_back(run_module_case(budget, report.peaks, threads));
    done(report.rows.back());
  }
  for (const CachedCase& c : cached_cases()) {
    if (!selected(options, c.group, c.id)) continue;
    std::fprintf(log, "%s %s...\n", c.id.c_str(), c.title.c_str());
    report.rows.push_back(run_cached_case(c, budget, report.peaks, threads, options.peer));
    done(report.rows.back());
  }
  if (options.peer && (!ran.empty() || module)) {
    std::fprintf(log, "PyTorch peer...\n");
    std::fflush(log);
    run_torch_peer(ran, module, budget, threads, report);
  } else {
    report.torch.error = options.peer ? "n/a (no case it runs was selected)" : "n/a (--no-peer)";
  }
  for (Row& row : report.rows)
    if (!row.torch_ms && row.torch_note.empty())
      row.torch_note = row.id == "memory" || row.dense_note.size() ? "n/a (not a peer case)" : report.torch.error;
  return report;
}

void reexec_with_openblas_coretype() {
  constexpr const char* kMarker = "MULTIHEAD_BENCH_REEXEC";
  const char* current = std::getenv("OPENBLAS_CORETYPE");
  if (!__builtin_cpu_supports("avx512f") || std::getenv(kMarker) || (current && std::strcmp(current, "SkylakeX") == 0))
    return;
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t pos = 0; pos < cmdline.size();) {
    const size_t end = cmdline.find('\0', pos);
    args.push_back(cmdline.substr(pos, end - pos));
    pos = end == std::string::npos ? cmdline.size() : end + 1;
  }
  if (args.empty()) return;
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fprintf(stderr, "multihead bench: re-running with OPENBLAS_CORETYPE=SkylakeX (was %s): OpenBLAS reads it when loaded\n",
               current ? current : "unset");
  std::fflush(nullptr);
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  setenv(kMarker, "1", 1);
  execv("/proc/self/exe", argv.data());
  // Only reached when exec failed: go on with the core type OpenBLAS already picked.
  unsetenv(kMarker);
}

}  // namespace multihead::bench
