// libFuzzer target: the `multihead` command line's parsing layer (cli/arguments.cpp). The
// input is a subcommand choice and NUL-separated arguments; they are parsed by
// cli::parse_and_run under an app declared as cli/main.cpp, bench_command.cpp and
// demo_command.cpp declare theirs (same options, flags and cli:: validators; stand-in lists
// for the case kinds and bench case names), whose commands only check what they were given
// (every validated number within its bounds, no empty path) and return 0. Checked: the exit
// status is 0, 1 or 2; stderr holds exactly one line when it is not 0 and nothing when it
// is, valid UTF-8 without a control byte. Every argument also goes to the parsing functions
// directly: parse_integer against an independent parser, parse_real and the integer()/real()
// validators' rewrites reading back to the same value, and escape(): valid UTF-8 with no
// control byte, text that needs no escaping unchanged, and its output escaping to itself.
// `cli_args_fuzz -write_seeds=DIR` writes a few command lines to seed a corpus and exits.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/arguments.hpp"

namespace cli = multihead::cli;

namespace {

FILE* g_stderr = nullptr;  // the real one: the library's messages go to a memory stream

[[noreturn]] void fail(const char* what, std::string_view input = {}) {
  std::fprintf(g_stderr, "cli_args_fuzz: %s", what);
  if (!input.empty()) std::fprintf(g_stderr, " ('%s')", cli::escape(input, 400).c_str());
  std::fprintf(g_stderr, "\n");
  std::abort();
}

// ---- independent oracles --------------------------------------------------------------

// Well-formed UTF-8 (Unicode table 3-7); *controls: it holds C0, DEL or C1 (U+0080..U+009F).
bool valid_utf8(std::string_view s, bool* controls) {
  *controls = false;
  for (size_t i = 0; i < s.size();) {
    const auto c = uint8_t(s[i]);
    if (c < 0x80) {
      *controls |= c < 0x20 || c == 0x7f;
      ++i;
      continue;
    }
    size_t n;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) n = 2, cp = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) n = 3, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) n = 4, cp = c & 0x07, min = 0x10000;
    else return false;
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const auto t = uint8_t(s[i + k]);
      if ((t & 0xc0) != 0x80) return false;
      cp = cp << 6 | (t & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    *controls |= cp < 0xa0;
    i += n;
  }
  return true;
}

// Decimal integer, optional '-' (signed types only), nothing else; in [lo, hi].
template <class T>
std::optional<T> reference_integer(std::string_view s, T lo, T hi) {
  size_t i = 0;
  bool negative = false;
  if (std::numeric_limits<T>::is_signed && i < s.size() && s[i] == '-') negative = true, ++i;
  if (i == s.size()) return std::nullopt;
  __int128 value = 0;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
    value = value * 10 + (s[i] - '0');
    if (value > (__int128(1) << 70)) return std::nullopt;  // beyond every T; stop before __int128 overflows
  }
  if (negative) value = -value;
  if (value < __int128(lo) || value > __int128(hi)) return std::nullopt;
  return T(value);
}

template <class T>
void check_integer(std::string_view s, T lo, T hi) {
  const std::optional<T> got = cli::parse_integer<T>(s, lo, hi), want = reference_integer<T>(s, lo, hi);
  if (got != want) fail("parse_integer differs from a plain decimal parser", s);
  // The validator: accepts exactly what parse_integer does, rewriting to canonical decimal.
  std::string text(s);
  const std::string error = cli::integer<T>(lo, hi)(text);
  if (error.empty() != got.has_value()) fail("integer() and parse_integer disagree", s);
  if (got && text != std::to_string(*got)) fail("integer() did not rewrite to canonical decimal", s);
}

void check_real(std::string_view s, double lo, double hi) {
  const std::optional<double> got = cli::parse_real(s, lo, hi);
  if (got && !(std::isfinite(*got) && *got >= lo && *got <= hi)) fail("parse_real accepted a value out of range", s);
  std::string text(s);
  const std::string error = cli::real(lo, hi)(text);
  if (error.empty() != got.has_value()) fail("real() and parse_real disagree", s);
  if (got) {  // the rewrite reads back to the same double
    const std::optional<double> again = cli::parse_real(text, lo, hi);
    if (!again || *again != *got) fail("real()'s rewrite does not read back exactly", s);
  }
}

void check_escape(std::string_view s, size_t max) {
  const std::string e = cli::escape(s, max);
  bool controls = false;
  if (!valid_utf8(e, &controls) || controls) fail("escape() gave invalid UTF-8 or a control byte", s);
  if (cli::escape(e, e.size() + 1) != e) fail("escape()'s output does not escape to itself", s);
  bool in_controls = false;
  if (s.size() <= max && valid_utf8(s, &in_controls) && !in_controls && e != s)
    fail("escape() changed text that needs no escaping", s);
}

// ---- the app, as cli/main.cpp declares it ---------------------------------------------

const std::vector<std::string> kKinds = {"plain", "causal_top_left", "window", "mask", "bias"};  // stand-ins
bool is_kind(const std::string& s) {
  for (const std::string& k : kKinds)
    if (s == k) return true;
  return false;
}
std::string replay_error(const std::string& text) {  // as main.cpp's
  const size_t colon = text.find(':');
  if (colon == std::string::npos) return "expected KIND:SEED, got '" + cli::escape(text) + "'";
  if (!is_kind(text.substr(0, colon))) return "unknown case kind '" + cli::escape(text.substr(0, colon)) + "'";
  if (!cli::parse_integer<uint64_t>(text.substr(colon + 1)))
    return "expected KIND:SEED with SEED an integer, got '" + cli::escape(text) + "'";
  return "";
}
bool is_bench_case(const std::string& s) { return s == "S1" || s == "S2" || s == "D1" || s == "memory" || s == "S2-bf16"; }
std::string cases_error(const std::string& list) {  // as bench_command.cpp's (empty parts kept)
  size_t begin = 0;
  while (true) {
    const size_t comma = list.find(',', begin);
    const std::string name = list.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
    if (!is_bench_case(name)) return "unknown case '" + cli::escape(name) + "' in '" + cli::escape(list) + "'";
    if (comma == std::string::npos) return "";
    begin = comma + 1;
  }
}
constexpr int64_t kDModel = 64, kMaxLayers = 64;
CLI::Validator divisor_of(int64_t d_model) {  // as demo_command.cpp's
  return CLI::Validator(
      [d_model](std::string& text) {
        const std::optional<int64_t> heads = cli::parse_integer<int64_t>(text, 1, d_model);
        if (heads && d_model % *heads == 0) {
          text = std::to_string(*heads);
          return std::string();
        }
        return "expected a divisor of d_model " + std::to_string(d_model) + ", got '" + cli::escape(text) + "'";
      },
      "");
}

int parse(int argc, char** argv) {
  CLI::App app{"multihead: multi-head attention, checked against a double-precision oracle", "multihead"};
  app.footer(cli::kExitStatusFooter);
  app.set_version_flag("--version", std::string("multihead 0.0.0"));
  app.require_subcommand(0, 1);

  CLI::App* check = app.add_subcommand("check", "Run random attention cases");
  int64_t cases = 300;
  uint64_t seed = 0;
  bool backward = true;
  int threads = 0;
  std::vector<std::string> kinds, replays;
  check->add_option("--cases,-n", cases, "Number of random cases")->capture_default_str()->check(cli::integer<int64_t>(0));
  check->add_option("--seed,-s", seed, "Run seed")->check(cli::integer<uint64_t>());
  check->add_flag("--backward,!--no-backward", backward, "Also check the backward pass");
  check->add_option("--kind,-k", kinds, "Only these kinds")
      ->check(CLI::Validator([](std::string& s) { return is_kind(s) ? std::string() : "expected a case kind, got '" + cli::escape(s) + "'"; }, ""));
  check->add_option("--replay", replays, "KIND:SEED")->check(CLI::Validator([](std::string& s) { return replay_error(s); }, ""));
  check->add_option("--threads", threads, "Kernel threads")->check(cli::integer<int>(0, cli::kMaxThreads));

  CLI::App* inspect = app.add_subcommand("inspect", "List the tensors of a safetensors file");
  std::string inspect_path, prefix;
  int64_t num_heads = 0;
  inspect->add_option("file", inspect_path, "A .safetensors file")->required()->check(cli::non_empty("a file path"));
  inspect->add_option("--prefix,-p", prefix, "Only the tensors under this name prefix");
  inspect->add_option("--num-heads", num_heads, "Query heads")->check(cli::integer<int64_t>(0));

  CLI::App* bench = app.add_subcommand("bench", "Time the attention cases");
  bool quick = false, peer = true;
  std::string json_path, bench_cases;
  int bench_threads = 0, repeats = 0;
  bench->add_flag("--quick", quick, "Fewer repeats");
  CLI::Option* json = bench->add_option("--json", json_path, "JSON file")->check(cli::non_empty("a file path"));
  bench->add_option("--cases", bench_cases, "Only these cases")
      ->check(CLI::Validator([](std::string& s) { return cases_error(s); }, ""));
  bench->add_option("--threads", bench_threads, "Threads")->check(cli::integer<int>(0, cli::kMaxThreads));
  bench->add_flag("!--no-peer", peer, "Do not time PyTorch");
  bench->add_option("--repeats", repeats, "Timed repeats per case")->check(cli::integer<int>(0));

  CLI::App* demo = app.add_subcommand("demo", "Train a tiny transformer");
  int64_t steps = 4000, heads = 4, layers = 2;
  uint64_t demo_seed = 1;
  std::string out_dir = "multihead-demo";
  demo->add_option("--steps", steps, "Training steps")->capture_default_str()->check(cli::integer<int64_t>(1));
  demo->add_option("--heads", heads, "Heads")->capture_default_str()->check(divisor_of(kDModel));
  demo->add_option("--layers", layers, "Layers")->capture_default_str()->check(cli::integer<int64_t>(1, kMaxLayers));
  demo->add_option("--seed", demo_seed, "Seed")->capture_default_str()->check(cli::integer<uint64_t>());
  demo->add_option("--out", out_dir, "Folder")->capture_default_str()->check(cli::non_empty("a folder path"));

  // The commands only check what the parse handed them.
  const std::vector<cli::Command> commands = {
      {check,
       [&] {
         if (cases < 0 || threads < 0 || threads > cli::kMaxThreads) fail("check: a value out of its bounds");
         for (const std::string& k : kinds)
           if (!is_kind(k)) fail("check: an unknown kind passed", k);
         for (const std::string& r : replays)
           if (!replay_error(r).empty()) fail("check: a bad replay passed", r);
         return cli::kExitSuccess;
       }},
      {inspect,
       [&] {
         if (inspect_path.empty() || num_heads < 0) fail("inspect: an empty path or negative heads");
         return cli::kExitSuccess;
       }},
      {bench,
       [&] {
         if (bench_threads < 0 || bench_threads > cli::kMaxThreads || repeats < 0) fail("bench: a value out of its bounds");
         if (json->count() && json_path.empty()) fail("bench: an empty --json path");
         if (!bench_cases.empty() && !cases_error(bench_cases).empty()) fail("bench: a bad case list passed", bench_cases);
         return cli::kExitSuccess;
       }},
      {demo,
       [&] {
         if (steps < 1 || heads < 1 || kDModel % heads != 0 || layers < 1 || layers > kMaxLayers || out_dir.empty())
           fail("demo: a value out of its bounds");
         return cli::kExitSuccess;
       }},
  };
  return cli::parse_and_run(app, argc, argv, commands);
}

#define S(literal) std::string(literal, sizeof(literal) - 1)  // NULs included
void write_seeds(const std::string& dir) {
  const std::vector<std::string> lines = {
      S("\0--cases\0" "10\0--seed\0" "18446744073709551615\0--no-backward\0--kind\0plain\0--threads\0" "2"),
      S("\0--replay\0window:42\0-n\0" "0\0-k\0mask"),
      S("\1model.safetensors\0--prefix\0layers.0.\0--num-heads\0" "8"),
      S("\2--quick\0--json\0out.json\0--cases\0S1,S2-bf16\0--threads\0" "0\0--no-peer\0--repeats\0" "3"),
      S("\3--steps\0" "1\0--heads\0" "16\0--layers\0" "64\0--seed\0" "7\0--out\0dir"),
      S("\4--help"),
      S("\4--version"),
      S("\5chekc\0--cases\0-1"),
      S("\0--cases=010\0--threads\0" "1025\0--seed=-1"),
  };
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string path = dir + "/seed" + std::to_string(i);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(lines[i].data(), 1, lines[i].size(), f) != lines[i].size() || std::fclose(f) != 0) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      std::exit(1);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  const std::string flag = "-write_seeds=";
  for (int i = 1; i < *argc; ++i)
    if (std::strncmp((*argv)[i], flag.c_str(), flag.size()) == 0) {
      write_seeds((*argv)[i] + flag.size());
      std::exit(0);
    }
  // --help and --version print to stdout: away with it (libFuzzer writes to stderr only).
  if (!std::freopen("/dev/null", "w", stdout)) return 1;
  g_stderr = stderr;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // Byte 0: the subcommand; the rest: arguments, NUL-separated (at most 64).
  const uint8_t choice = data[0];
  std::vector<std::string> pieces;
  std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  while (pieces.size() < 64) {
    const size_t nul = rest.find('\0');
    pieces.emplace_back(rest.substr(0, nul));
    if (nul == std::string_view::npos) break;
    rest.remove_prefix(nul + 1);
  }
  if (size == 1) pieces.clear();

  // The parsing functions on every piece, and on the whole input.
  const size_t max = choice & 0x80 ? choice & 0x3f : 200;
  check_escape(std::string_view(reinterpret_cast<const char*>(data), size), max);
  for (const std::string& p : pieces) {
    check_escape(p, max);
    check_integer<int64_t>(p, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
    check_integer<uint64_t>(p, 0, std::numeric_limits<uint64_t>::max());
    check_integer<int>(p, 0, cli::kMaxThreads);
    check_integer<int64_t>(p, 1, kMaxLayers);
    check_real(p, -std::numeric_limits<double>::max(), std::numeric_limits<double>::max());
    check_real(p, 0.0, 1.0);
  }

  // argv: the program, the subcommand (one of the four, none, or the first piece), the rest.
  static const char* kCommands[] = {"check", "inspect", "bench", "demo"};
  std::vector<std::string> args = {"multihead"};
  const int which = (choice & 0x7f) % 6;
  size_t first = 0;
  if (which < 4) args.push_back(kCommands[which]);
  else if (which == 5 && !pieces.empty()) args.push_back(pieces[first++]);
  for (size_t i = first; i < pieces.size(); ++i) args.push_back(pieces[i]);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  // Messages go to a memory stream, to be checked: one escaped line, or nothing on success.
  char* text = nullptr;
  size_t text_size = 0;
  FILE* messages = open_memstream(&text, &text_size);
  if (!messages) fail("open_memstream");
  stderr = messages;
  const int status = parse(int(args.size()), argv.data());
  stderr = g_stderr;
  std::fclose(messages);
  const std::string whole(text, text_size);
  std::free(text);

  if (status != cli::kExitSuccess && status != cli::kExitFailure && status != cli::kExitUsage)
    fail("an exit status other than 0, 1 or 2");
  if (status == cli::kExitSuccess && !whole.empty()) fail("a successful parse wrote to stderr", whole);
  if (status != cli::kExitSuccess) {
    if (whole.empty() || whole.back() != '\n' || whole.find('\n') != whole.size() - 1)
      fail("a failed parse did not write exactly one line to stderr", whole);
    bool controls = false;
    if (!valid_utf8(std::string_view(whole).substr(0, whole.size() - 1), &controls) || controls)
      fail("an error message holds invalid UTF-8 or a control byte", whole);
  }
  return 0;
}
