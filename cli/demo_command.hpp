// `multihead demo`: trains a tiny transformer on a copy task and shows what its heads learned.
#pragma once

#include <CLI/CLI.hpp>

// Registers the `demo` subcommand; it runs from its own callback during parsing and
// reports a failure through CLI::RuntimeError (2: an error).
void add_demo_command(CLI::App& app);
