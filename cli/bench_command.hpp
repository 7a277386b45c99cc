// `multihead bench`: times the speed cases against this machine's peaks,
// the naive path and PyTorch, prints a table and optionally writes JSON.
#pragma once

#include <CLI/CLI.hpp>

// Registers the `bench` subcommand; it runs from its own callback during parsing and
// reports its exit status through CLI::RuntimeError (1: a check failed, 2: an error).
void add_bench_command(CLI::App& app);
