// The report of `multihead bench`: the table on stdout and the JSON file.
#include <cerrno>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "bench/harness.hpp"
#include "multihead/error.hpp"

namespace multihead::bench {

namespace {

using json = nlohmann::json;

std::string ratio(const std::optional<double>& other_ms, const Row& row) {
  if (!other_ms || !row.ran) return "n/a";
  return format("%.2f", *other_ms / row.median_ms);
}

}  // namespace

void print_report(const BenchReport& r, std::FILE* out) {
  std::fprintf(out, "multihead bench%s: %s (%s), %d thread(s)\n", r.options.quick ? " --quick" : "", r.cpu.c_str(),
               r.features.c_str(), r.threads);
  const Peaks& p = r.peaks;
  std::fprintf(out, "peaks: fp32 FMA %.1f GFLOP/s (%s), bf16 dot %s, read %.1f GB/s (%.0f MiB buffer)\n",
               p.fp32_gflops, p.fp32_isa.c_str(),
               p.bf16_gflops ? format("%.1f GFLOP/s", *p.bf16_gflops).c_str() : "n/a (no avx512bf16)", p.read_gbps,
               double(p.read_bytes) / (1 << 20));
  std::fprintf(out, "%-8s %-20s %-44s %9s %9s %9s %3s %9s %-7s %6s %-8s %7s %7s %7s %7s  %s\n", "case", "what",
               "shape", "median ms", "min ms", "max ms", "n", "rate", "unit", "%peak", "of", "x naive", "x dense",
               "x torch", "x ort", "check");
  for (const Row& row : r.rows) {
    if (!row.ran) {
      std::fprintf(out, "%-8s %-20s %-44s %s\n", row.id.c_str(), row.title.c_str(), row.shape.c_str(), row.note.c_str());
      continue;
    }
    std::fprintf(out, "%-8s %-20s %-44s %9.3f %9.3f %9.3f %3d %9.1f %-7s %6s %-8s %7s %7s %7s %7s  %s\n",
                 row.id.c_str(), row.title.c_str(), row.shape.c_str(), row.median_ms, row.min_ms, row.max_ms,
                 row.repeats, row.rate, row.unit.c_str(),
                 row.peak_fraction ? format("%.1f%%", 100 * *row.peak_fraction).c_str() : "n/a",
                 row.peak_name.c_str(), ratio(row.naive_ms, row).c_str(), ratio(row.dense_ms, row).c_str(),
                 ratio(row.torch_ms, row).c_str(), ratio(row.ort_ms, row).c_str(), row.check.c_str());
  }
  std::fprintf(out, "notes:\n");
  for (const Row& row : r.rows) {
    if (row.naive_ms) std::fprintf(out, "  %s: naive %.1f ms (%s)\n", row.id.c_str(), *row.naive_ms, row.naive_note.c_str());
    else if (!row.naive_note.empty()) std::fprintf(out, "  %s: naive %s\n", row.id.c_str(), row.naive_note.c_str());
    if (row.dense_ms) std::fprintf(out, "  %s: dense %.3f ms (%s)\n", row.id.c_str(), *row.dense_ms, row.dense_note.c_str());
    if (row.torch_ms) std::fprintf(out, "  %s: torch %.3f ms (%s)\n", row.id.c_str(), *row.torch_ms, row.torch_note.c_str());
    if (row.ort_ms) std::fprintf(out, "  %s: ONNX Runtime %.3f ms (%s)\n", row.id.c_str(), *row.ort_ms, row.ort_note.c_str());
    else if (!row.ort_note.empty()) std::fprintf(out, "  %s: ONNX Runtime %s\n", row.id.c_str(), row.ort_note.c_str());
    if (row.ran && !row.note.empty()) std::fprintf(out, "  %s: %s\n", row.id.c_str(), row.note.c_str());
  }
  std::fprintf(out, "  S3 and D1-D2 rates count the K and V bytes read (int8: with its scales); K/V are evicted from the\n"
                   "  CPU caches before each call (D rows: the cache's blocks and the dense copy alike)\n");
  std::fprintf(out, "  OpenBLAS core type of this process: %s\n", r.openblas_core.c_str());
  if (r.torch.available)
    std::fprintf(out, "  PyTorch %s, %d threads, BLAS: %s [%s]\n", r.torch.version.c_str(), r.torch.threads,
                 r.torch.blas.c_str(), r.torch.openblas_config.c_str());
  else
    std::fprintf(out, "  PyTorch: %s\n", r.torch.error.c_str());
  std::fprintf(out, "checks: %s (check = worst error / allowed against the double oracle on a sample; <= 1 passes)\n",
               r.pass() ? "all passed" : "FAILED");
}

void write_json(const BenchReport& r, const std::string& path) {
  const auto opt = [](const std::optional<double>& x) { return x ? json(*x) : json(nullptr); };
  json rows = json::array();
  for (const Row& row : r.rows) {
    json j = {{"id", row.id}, {"title", row.title}, {"shape", row.shape}, {"ran", row.ran}, {"note", row.note},
              {"check", row.check}, {"check_pass", row.check_pass}};
    if (row.ran) {
      j.update({{"median_ms", row.median_ms}, {"min_ms", row.min_ms}, {"max_ms", row.max_ms},
                {"repeats", row.repeats}, {"flops", row.flops}, {"bytes", row.bytes}, {"unit", row.unit},
                {"rate", row.rate}, {"peak", row.peak_name}, {"peak_fraction", opt(row.peak_fraction)},
                {"naive_ms", opt(row.naive_ms)}, {"naive_note", row.naive_note},
                {"speedup_naive", row.naive_ms ? json(*row.naive_ms / row.median_ms) : json(nullptr)},
                {"dense_ms", opt(row.dense_ms)}, {"dense_note", row.dense_note},
                {"speedup_dense", row.dense_ms ? json(*row.dense_ms / row.median_ms) : json(nullptr)},
                {"torch_ms", opt(row.torch_ms)}, {"torch_note", row.torch_note},
                {"speedup_torch", row.torch_ms ? json(*row.torch_ms / row.median_ms) : json(nullptr)},
                {"ort_ms", opt(row.ort_ms)}, {"ort_note", row.ort_note},
                {"speedup_ort", row.ort_ms ? json(*row.ort_ms / row.median_ms) : json(nullptr)},
                {"rss_growth_mib", opt(row.rss_growth_mib)}});
    }
    rows.push_back(j);
  }
  const Peaks& p = r.peaks;
  const json doc = {
      {"quick", r.options.quick},
      {"threads", r.threads},
      {"cpu", r.cpu},
      {"features", r.features},
      {"openblas_core", r.openblas_core},
      {"peaks",
       {{"fp32_gflops", p.fp32_gflops}, {"fp32_isa", p.fp32_isa}, {"bf16_gflops", opt(p.bf16_gflops)},
        {"read_gbps", p.read_gbps}, {"read_bytes", p.read_bytes}}},
      {"torch",
       {{"available", r.torch.available}, {"version", r.torch.version}, {"threads", r.torch.threads},
        {"blas", r.torch.blas}, {"openblas_config", r.torch.openblas_config}, {"error", r.torch.error}}},
      {"rows", rows},
      {"pass", r.pass()},
  };
  std::ofstream out(path);
  out << doc.dump(2) << "\n";
  if (!out) throw Error(ErrorKind::kIoError, path, "file", "writable", std::strerror(errno));
}

}  // namespace multihead::bench
