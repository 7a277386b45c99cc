#include "demo_command.hpp"

#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "tiny_transformer/train.hpp"

namespace {

struct DemoArgs {
  tiny_transformer::DemoConfig config;
  std::string out_dir = "multihead-demo";
};

void run(const DemoArgs& args) {
  try {
    tiny_transformer::run_demo(args.config, args.out_dir, stderr, stdout);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "multihead demo: %s\n", e.what());
    throw CLI::RuntimeError(2);
  }
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto args = std::make_shared<DemoArgs>();
  tiny_transformer::DemoConfig& c = args->config;
  CLI::App* cmd = app.add_subcommand(
      "demo", "Train a tiny transformer (multi-head vs single-head) and show what each attention head learned");
  cmd->add_option("--steps", c.steps, "Training steps per model")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--heads", c.heads, "Heads of the multi-head model (must divide d_model)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--layers", c.layers, "Transformer layers")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--seed", c.seed, "Seed of the data and the initial weights")->capture_default_str();
  cmd->add_option("--out", args->out_dir, "Folder for attention.html and heads.png")->capture_default_str();
  cmd->callback([args] { run(*args); });
}
