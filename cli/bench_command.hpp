// `multihead bench`: times the speed cases against this machine's peaks,
// the naive path and PyTorch, prints a table and optionally writes JSON.
#pragma once

#include <CLI/CLI.hpp>

#include "cli/arguments.hpp"

// Registers the `bench` subcommand. Its run returns 1 when a result check failed and
// throws on an error (cli::parse_and_run turns that into 1 as well).
multihead::cli::Command add_bench_command(CLI::App& app);
