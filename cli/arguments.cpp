#include "cli/arguments.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <iostream>

namespace multihead::cli {

namespace {

void append_hex(std::string& out, std::string_view bytes) {
  for (const char c : bytes) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(static_cast<uint8_t>(c)));
    out += buf;
  }
}

// Length of the well-formed UTF-8 sequence of two or more bytes at s[i] (no overlong forms,
// no surrogates, at most U+10FFFF) and its code point; 0 when there is none.
size_t utf8_sequence(std::string_view s, size_t i, uint32_t& code_point) {
  const auto lead = static_cast<uint8_t>(s[i]);
  size_t n = 0;
  uint32_t min = 0;
  if (lead >= 0xc2 && lead <= 0xdf) n = 2, min = 0x80, code_point = lead & 0x1f;
  else if (lead >= 0xe0 && lead <= 0xef) n = 3, min = 0x800, code_point = lead & 0x0f;
  else if (lead >= 0xf0 && lead <= 0xf4) n = 4, min = 0x10000, code_point = lead & 0x07;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto c = static_cast<uint8_t>(s[i + k]);
    if ((c & 0xc0) != 0x80) return 0;
    code_point = code_point << 6 | (c & 0x3f);
  }
  if (code_point < min || code_point > 0x10ffff || (code_point >= 0xd800 && code_point <= 0xdfff)) return 0;
  return n;
}

// The selected command's name ("multihead check"), or the program's before one was seen.
std::string context(const CLI::App& app, const std::vector<Command>& commands) {
  for (const Command& c : commands)
    if (c.app->parsed()) return app.get_name() + " " + c.app->get_name();
  return app.get_name();
}

void report(const std::string& where, const std::string& message) {
  std::fflush(stdout);  // what the command printed comes before the error
  std::fprintf(stderr, "%s: %s\n", where.c_str(), escape(message, 1000).c_str());
}

}  // namespace

std::string escape(std::string_view s, size_t max) {
  std::string out;
  size_t i = 0;
  while (i < s.size() && i < max) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
      ++i;
      continue;
    }
    uint32_t code_point = 0;
    const size_t n = c >= 0x80 ? utf8_sequence(s, i, code_point) : 0;
    if (n == 0) {
      append_hex(out, s.substr(i, 1));  // control character or a byte outside UTF-8
      ++i;
    } else {
      // C1 controls (U+0080..U+009F) steer some terminals like ESC does.
      if (code_point < 0xa0) append_hex(out, s.substr(i, n));
      else out.append(s.substr(i, n));
      i += n;
    }
  }
  if (i < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

std::optional<double> parse_real(std::string_view s, double lo, double hi) {
  double value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(value) || value < lo || value > hi)
    return std::nullopt;
  return value;
}

std::string integer_error(std::string_view text, const std::string& lo, const std::string& hi) {
  return "expected an integer in [" + lo + ", " + hi + "], got '" + escape(text) + "'";
}

CLI::Validator real(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) {
        const std::optional<double> value = parse_real(text, lo, hi);
        if (!value) {
          char bounds[64];  // %g: DBL_MAX reads 1.79769e+308, not 309 digits
          std::snprintf(bounds, sizeof bounds, "[%g, %g]", lo, hi);
          return std::string("expected a finite number in ") + bounds + ", got '" + escape(text) + "'";
        }
        char exact[32];  // %.17g reads back to the same double
        std::snprintf(exact, sizeof exact, "%.17g", *value);
        text = exact;
        return std::string();
      },
      "");
}

CLI::Validator non_empty(const std::string& what) {
  return CLI::Validator(
      [what](std::string& text) { return text.empty() ? "expected " + what + ", got ''" : std::string(); }, "");
}

int parse_and_run(CLI::App& app, int argc, char** argv, const std::vector<Command>& commands) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version: the text goes to stdout
    return app.exit(e, std::cout, std::cerr);
  } catch (const CLI::ParseError& e) {
    report(context(app, commands), e.what());
    return kExitUsage;
  } catch (const std::exception& e) {  // out of memory, say: not the user's fault
    report(context(app, commands), e.what());
    return kExitFailure;
  }
  for (const Command& c : commands) {
    if (!c.app->parsed()) continue;
    try {
      return c.run();
    } catch (const std::exception& e) {
      report(context(app, commands), e.what());
      return kExitFailure;
    }
  }
  // Checked here rather than by require_subcommand(1): CLI11 checks that before unexpected
  // arguments, and `multihead chekc` would only hear "A subcommand is required".
  std::string names;
  for (const Command& c : commands) names += (names.empty() ? "" : ", ") + c.app->get_name();
  report(app.get_name(), "expected a command (" + names + "); see " + app.get_name() + " --help");
  return kExitUsage;
}

}  // namespace multihead::cli
