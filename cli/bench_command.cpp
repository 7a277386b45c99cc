#include "bench_command.hpp"

#include <cstdio>
#include <exception>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.hpp"

namespace {

namespace bench = multihead::bench;

struct BenchArgs {
  bench::BenchOptions options;
  std::string cases;  // comma-separated
  std::string json_path;
};

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');)
    if (!part.empty()) parts.push_back(part);
  return parts;
}

void run(BenchArgs& args) {
  // OpenBLAS (the module's projections) chose its kernels when it was loaded.
  bench::reexec_with_openblas_coretype();
  args.options.cases = split_commas(args.cases);
  try {
    const bench::BenchReport report = bench::run_bench(args.options, stderr);
    bench::print_report(report, stdout);
    if (!args.json_path.empty()) bench::write_json(report, args.json_path);
    if (!report.pass()) throw CLI::RuntimeError(1);
  } catch (const CLI::Error&) {
    throw;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "multihead bench: %s\n", e.what());
    throw CLI::RuntimeError(2);
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Time the attention cases against this machine's peaks, the naive path and PyTorch");
  std::string groups;
  for (const std::string& g : bench::case_groups()) groups += (groups.empty() ? "" : ",") + g;
  cmd->add_flag("--quick", args->options.quick, "Fewer repeats and a shorter memory case: under a minute");
  cmd->add_option("--json", args->json_path, "Also write the numbers to this JSON file");
  cmd->add_option("--cases", args->cases, "Only these cases, comma-separated: " + groups + " (or a row id such as S2-bf16)")
      ->check([](const std::string& s) {
        for (const std::string& name : split_commas(s))
          if (!bench::is_case_name(name)) return "unknown case '" + name + "'";
        return std::string();
      });
  cmd->add_option("--threads", args->options.threads, "Threads for ours and PyTorch (default: all cores)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("!--no-peer", args->options.peer, "Do not time PyTorch");
  cmd->add_option("--repeats", args->options.repeats, "Timed repeats per case (default: as many as fit the budget)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args] { run(*args); });
}
