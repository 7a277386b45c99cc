// `multihead demo`: trains a tiny transformer on a copy task and shows what its heads learned.
#pragma once

#include <CLI/CLI.hpp>

#include "cli/arguments.hpp"

// Registers the `demo` subcommand. Its run returns 0 and throws on an error (exit status 1).
multihead::cli::Command add_demo_command(CLI::App& app);
