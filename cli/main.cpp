// The `multihead` command line: a front end that parses, calls the library and prints.
//   multihead check [--cases N] [--seed S] [--no-backward] [--kind K]... [--replay KIND:SEED]...
//   multihead inspect FILE.safetensors [--prefix P] [--num-heads N]
//   multihead bench ... (bench_command.cpp), multihead demo ... (demo_command.cpp)
// Exit status: 0 success, 1 runtime failure, 2 usage error (cli/arguments.hpp).
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench_command.hpp"
#include "demo_command.hpp"
#include "cli/arguments.hpp"
#include "cli/inspect.hpp"
#include "multihead/multihead.hpp"
#include "reference/cases.hpp"

namespace {

namespace cli = multihead::cli;
namespace ref = multihead::reference;

uint64_t fresh_seed() {
  const auto now = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  return ref::derive_seed(std::random_device{}(), now);
}

std::string format_ratio(double r) {
  if (std::isinf(r)) return "inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", r);
  return buf;
}

void print_table(const ref::CheckReport& report) {
  std::printf("%-20s %6s %7s %10s  %-6s %11s %11s %10s\n", "kind", "cases", "failed", "worst", "what",
              "error", "allowed", "MFLOP");
  int64_t cases = 0, failed = 0;
  double flops = 0;
  for (const ref::CheckRow& row : report.rows) {
    std::printf("%-20s %6lld %7lld %10s  %-6s %11.3e %11.3e %10.2f\n", ref::to_string(row.kind),
                static_cast<long long>(row.count), static_cast<long long>(row.failed),
                format_ratio(row.worst_ratio).c_str(), row.worst_what.c_str(), row.worst_error, row.worst_allowed,
                row.flops * 1e-6);
    cases += row.count, failed += row.failed;
    flops += row.flops;
  }
  std::printf("%-20s %6lld %7lld %10s  %-6s %11s %11s %10.2f\n", "total", static_cast<long long>(cases),
              static_cast<long long>(failed), "", "", "", "", flops * 1e-6);
  std::printf("worst = max error / allowed over the kind's cases (pass rule: <= 1)\n");
}

void print_case(const ref::Case& c, const ref::CaseResult& result) {
  std::printf("%s\n%s", c.describe().c_str(), result.report().c_str());
  std::printf("  replay: multihead check --replay %s:%llu\n", ref::to_string(c.kind),
              static_cast<unsigned long long>(c.seed));
}

// Every kind's name, for the help and the errors.
std::string kind_list() {
  std::string list;
  for (ref::CaseKind k : ref::all_case_kinds()) list += std::string(list.empty() ? "" : ", ") + ref::to_string(k);
  return list;
}

// --replay KIND:SEED, as a failing run prints it; the message says which half is wrong.
std::string replay_error(const std::string& text) {
  const size_t colon = text.find(':');
  if (colon == std::string::npos) return "expected KIND:SEED, got '" + cli::escape(text) + "'";
  if (!ref::parse_case_kind(text.substr(0, colon)))
    return "unknown case kind '" + cli::escape(text.substr(0, colon)) + "' in '" + cli::escape(text) +
           "' (kinds: " + kind_list() + ")";
  if (!cli::parse_integer<uint64_t>(text.substr(colon + 1)))
    return "expected KIND:SEED with SEED an integer in [0, " + std::to_string(UINT64_MAX) + "], got '" +
           cli::escape(text) + "'";
  return "";
}

int run_check(int64_t n, uint64_t seed, bool backward, const std::vector<std::string>& kind_names,
              const std::vector<std::string>& replays) {
  if (!replays.empty()) {
    bool pass = true;
    for (const std::string& r : replays) {  // validated by replay_error
      const size_t colon = r.find(':');
      const ref::CaseKind kind = *ref::parse_case_kind(r.substr(0, colon));
      const ref::Case c = ref::case_from_seed(kind, *cli::parse_integer<uint64_t>(r.substr(colon + 1)));
      const ref::CaseResult result = ref::run_case(c, backward);
      print_case(c, result);
      pass = pass && result.pass();
    }
    std::printf("%s\n", pass ? "PASS" : "FAIL");
    return pass ? cli::kExitSuccess : cli::kExitFailure;
  }

  std::vector<ref::CaseKind> kinds;
  for (const std::string& name : kind_names) kinds.push_back(*ref::parse_case_kind(name));
  if (kinds.empty()) kinds = ref::all_case_kinds();

  std::printf("multihead check: %lld random cases, seed %llu, %s\n", static_cast<long long>(n),
              static_cast<unsigned long long>(seed), backward ? "forward and backward" : "forward only");
  std::fflush(stdout);
  const ref::CheckReport report = ref::run_checks(n, seed, backward, kinds);
  print_table(report);
  if (report.pass()) {
    std::printf("PASS\n");
    return cli::kExitSuccess;
  }
  std::printf("\n%zu failing case(s):\n", report.failures.size());
  for (const ref::CheckFailure& f : report.failures) print_case(f.c, f.result);
  std::printf("FAIL (seed %llu)\n", static_cast<unsigned long long>(seed));
  return cli::kExitFailure;
}

}  // namespace

int main(int argc, char** argv) {
  // Named, so that messages and the usage line say "multihead" rather than argv[0].
  CLI::App app{"multihead: multi-head attention, checked against a double-precision oracle", "multihead"};
  app.footer(cli::kExitStatusFooter);  // before the subcommands: they copy it
  app.set_version_flag("--version", std::string("multihead ") + MULTIHEAD_VERSION);
  // At most one; none is reported by cli::parse_and_run, after CLI11 has named any stray argument.
  app.require_subcommand(0, 1);

  CLI::App* check = app.add_subcommand("check", "Run random attention cases of every option kind against the oracle");
  int64_t cases = 300;
  uint64_t seed = 0;
  bool backward = true;
  int threads = 0;
  std::vector<std::string> kinds, replays;
  check->add_option("--cases,-n", cases, "Number of random cases, spread over the kinds")
      ->capture_default_str()
      ->check(cli::integer<int64_t>(0));
  CLI::Option* seed_opt = check->add_option("--seed,-s", seed, "Run seed (default: drawn from the clock, printed)")
                              ->check(cli::integer<uint64_t>());
  check->add_flag("--backward,!--no-backward", backward, "Also check the backward pass (default on)");
  check->add_option("--kind,-k", kinds, "Only these kinds: " + kind_list())
      ->check(CLI::Validator(
          [](std::string& s) {
            return ref::parse_case_kind(s) ? std::string()
                                           : "expected a case kind (" + kind_list() + "), got '" + cli::escape(s) + "'";
          },
          ""));
  check->add_option("--replay", replays, "Re-run single cases, as printed by a failing run: KIND:SEED")
      ->check(CLI::Validator([](std::string& s) { return replay_error(s); }, ""));
  check->add_option("--threads", threads, "Kernel threads (default: all cores)")
      ->check(cli::integer<int>(0, cli::kMaxThreads));

  CLI::App* inspect = app.add_subcommand(
      "inspect", "List the tensors of a safetensors file and say whether they form a MultiHeadAttention module");
  std::string inspect_path, prefix;
  int64_t num_heads = 0;
  inspect->add_option("file", inspect_path, "A .safetensors file")->required()->check(cli::non_empty("a file path"));
  inspect->add_option("--prefix,-p", prefix, "Only the tensors under this name prefix, e.g. model.layers.0.self_attn.");
  inspect
      ->add_option("--num-heads", num_heads,
                   "Query heads (weights alone do not fix them; default: the fewest the shapes allow)")
      ->check(cli::integer<int64_t>(0));

  const std::vector<cli::Command> commands = {
      {check,
       [&] {
         multihead::set_num_threads(threads);
         return run_check(cases, seed_opt->count() ? seed : fresh_seed(), backward, kinds, replays);
       }},
      {inspect,
       [&] {
         // A file that is no module still lists fine (0); an unreadable or malformed one throws (1).
         std::fputs(
             multihead::format_inspection(multihead::inspect_safetensors(inspect_path, prefix, num_heads)).c_str(),
             stdout);
         return cli::kExitSuccess;
       }},
      add_bench_command(app),
      add_demo_command(app),
  };
  return cli::parse_and_run(app, argc, argv, commands);
}
