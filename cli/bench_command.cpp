#include "bench_command.hpp"

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench.hpp"

namespace {

namespace bench = multihead::bench;
namespace cli = multihead::cli;

struct BenchArgs {
  bench::BenchOptions options;
  std::string cases;  // comma-separated
  std::string json_path;
};

// Empty parts are kept, so that "S1,,S2" and "S1," are errors rather than quietly shorter lists.
std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> parts;
  size_t begin = 0;
  for (size_t comma; (comma = s.find(',', begin)) != std::string::npos; begin = comma + 1)
    parts.push_back(s.substr(begin, comma - begin));
  parts.push_back(s.substr(begin));
  return parts;
}

std::string cases_error(const std::string& list, const std::string& groups) {
  for (const std::string& name : split_commas(list))
    if (!bench::is_case_name(name))
      return "unknown case '" + cli::escape(name) + "' in '" + cli::escape(list) + "' (cases: " + groups +
             ", or a row id such as S2-bf16)";
  return "";
}

int run(BenchArgs& args) {
  // OpenBLAS (the module's projections) chose its kernels when it was loaded.
  bench::reexec_with_openblas_coretype();
  if (!args.cases.empty()) args.options.cases = split_commas(args.cases);
  const bench::BenchReport report = bench::run_bench(args.options, stderr);
  bench::print_report(report, stdout);
  if (!args.json_path.empty()) bench::write_json(report, args.json_path);
  return report.pass() ? cli::kExitSuccess : cli::kExitFailure;
}

}  // namespace

cli::Command add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Time the attention cases against this machine's peaks, the naive path and PyTorch");
  std::string groups;
  for (const std::string& g : bench::case_groups()) groups += (groups.empty() ? "" : ",") + g;
  cmd->add_flag("--quick", args->options.quick, "Fewer repeats and a shorter memory case: under a minute");
  cmd->add_option("--json", args->json_path, "Also write the numbers to this JSON file")
      ->check(cli::non_empty("a file path"));
  cmd->add_option("--cases", args->cases, "Only these cases, comma-separated: " + groups + " (or a row id such as S2-bf16)")
      ->check(CLI::Validator([groups](std::string& s) { return cases_error(s, groups); }, ""));
  cmd->add_option("--threads", args->options.threads, "Threads for ours and PyTorch (default: all cores)")
      ->check(cli::integer<int>(0, cli::kMaxThreads));
  cmd->add_flag("!--no-peer", args->options.peer, "Do not time PyTorch");
  cmd->add_option("--repeats", args->options.repeats, "Timed repeats per case (default: as many as fit the budget)")
      ->check(cli::integer<int>(0));
  return {cmd, [args] { return run(*args); }};
}
