// The `multihead` command line's parsing layer: strict number parsers turned into CLI11
// validators, escaping of user text in messages, and the one place that turns a parse, a run
// and its exceptions into the exit status:
//   0 success, 1 runtime failure (a failed check, an unreadable or corrupt file), 2 usage error.
// Every error is one line on stderr that names the argument and the value, escaped.
#pragma once

#include <charconv>
#include <cstddef>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <CLI/CLI.hpp>

namespace multihead::cli {

inline constexpr int kExitSuccess = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// The most --threads a command takes (0: all cores): OpenMP aborts on absurd thread counts.
inline constexpr int kMaxThreads = 1024;

// The convention, as every --help ends (set on the app before its subcommands: they inherit it).
inline constexpr const char* kExitStatusFooter =
    "Exit status: 0 success; 1 runtime failure (a failed check, an unreadable or corrupt file);\n"
    "2 usage error. Each error is one line on stderr that names the argument.";

// User text made safe for a terminal: control characters (C0, DEL, C1) and bytes that are not
// valid UTF-8 become \xNN; cut after about max bytes, with the full length noted. Its output
// escapes to itself.
std::string escape(std::string_view s, size_t max = 200);

// Strict integer: the whole text in decimal, within [lo, hi]. std::from_chars takes no '+',
// no spaces, no '-' for unsigned types and reports overflow, so nothing wraps or clamps.
template <class T>
std::optional<T> parse_integer(std::string_view s, T lo = std::numeric_limits<T>::min(),
                               T hi = std::numeric_limits<T>::max()) {
  T value{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size() || value < lo || value > hi) return std::nullopt;
  return value;
}

// Strict real: the whole text, finite (no nan, inf or overflow), within [lo, hi].
std::optional<double> parse_real(std::string_view s, double lo, double hi);

// "expected an integer in [lo, hi], got 'TEXT'" (TEXT escaped).
std::string integer_error(std::string_view text, const std::string& lo, const std::string& hi);

// CLI11 validators. On success they rewrite the value in canonical decimal, which CLI11's own
// conversion (strtoull with base 0: it would read "010" as octal and wrap "-1") then reads
// back exactly; on failure CLI11 reports "--option: <message>".
template <class T>
CLI::Validator integer(T lo = std::numeric_limits<T>::min(), T hi = std::numeric_limits<T>::max()) {
  return CLI::Validator(
      [lo, hi](std::string& text) {
        const std::optional<T> value = parse_integer<T>(text, lo, hi);
        if (!value) return integer_error(text, std::to_string(lo), std::to_string(hi));
        text = std::to_string(*value);
        return std::string();
      },
      "");
}
CLI::Validator real(double lo, double hi);
// A value that must not be empty (a path): "expected WHAT, got ''".
CLI::Validator non_empty(const std::string& what);

// A subcommand and what runs it after a successful parse: returns the exit status (0 or 1),
// throws std::exception on a runtime failure.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

// Parses, runs the parsed command and maps every outcome to the exit status: --help and
// --version print to stdout and give 0; any other CLI::ParseError, or no command, gives 2; a
// std::exception from the run gives 1. Errors go to stderr as one line "NAME[ COMMAND]: MESSAGE",
// NAME being the app's (construct it with one: left empty, CLI11 takes argv[0]).
int parse_and_run(CLI::App& app, int argc, char** argv, const std::vector<Command>& commands);

}  // namespace multihead::cli
