#include "demo_command.hpp"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "tiny_transformer/train.hpp"

namespace {

namespace cli = multihead::cli;

struct DemoArgs {
  tiny_transformer::DemoConfig config;
  std::string out_dir = "multihead-demo";
};

// The most layers --layers takes: the model is tiny by design, and a huge count would only
// exhaust memory before the first step.
constexpr int64_t kMaxLayers = 64;

// --heads must divide d_model (the model would refuse it only after parsing, at run time).
CLI::Validator divisor_of(int64_t d_model) {
  return CLI::Validator(
      [d_model](std::string& text) {
        const std::optional<int64_t> heads = cli::parse_integer<int64_t>(text, 1, d_model);
        if (heads && d_model % *heads == 0) {
          text = std::to_string(*heads);
          return std::string();
        }
        std::string divisors;
        for (int64_t h = 1; h <= d_model; ++h)
          if (d_model % h == 0) divisors += (divisors.empty() ? "" : ", ") + std::to_string(h);
        return "expected a divisor of d_model " + std::to_string(d_model) + " (" + divisors + "), got '" +
               cli::escape(text) + "'";
      },
      "");
}

}  // namespace

cli::Command add_demo_command(CLI::App& app) {
  auto args = std::make_shared<DemoArgs>();
  tiny_transformer::DemoConfig& c = args->config;
  CLI::App* cmd = app.add_subcommand(
      "demo", "Train a tiny transformer (multi-head vs single-head) and show what each attention head learned");
  cmd->add_option("--steps", c.steps, "Training steps per model")
      ->capture_default_str()
      ->check(cli::integer<int64_t>(1));
  cmd->add_option("--heads", c.heads,
                  "Heads of the multi-head model (a divisor of d_model " + std::to_string(c.d_model) + ")")
      ->capture_default_str()
      ->check(divisor_of(c.d_model));
  cmd->add_option("--layers", c.layers, "Transformer layers (at most " + std::to_string(kMaxLayers) + ")")
      ->capture_default_str()
      ->check(cli::integer<int64_t>(1, kMaxLayers));
  cmd->add_option("--seed", c.seed, "Seed of the data and the initial weights")
      ->capture_default_str()
      ->check(cli::integer<uint64_t>());
  cmd->add_option("--out", args->out_dir, "Folder for attention.html and heads.png")
      ->capture_default_str()
      ->check(cli::non_empty("a folder path"));
  return {cmd, [args] {
            tiny_transformer::run_demo(args->config, args->out_dir, stderr, stdout);
            return cli::kExitSuccess;
          }};
}
