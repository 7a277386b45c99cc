// The PyTorch peer: bench/torch_peer.py (embedded in the binary) run by /usr/bin/python3
// on the same cases with the same thread count, in PyTorch's best configuration.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>

#include "bench/harness.hpp"

extern char** environ;

namespace multihead::bench {

// bench/torch_peer.py, embedded at configure time (peer_sources.cpp).
extern const char* const kTorchPeerSource;

std::optional<std::string> run_capture(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                                       const std::string& stderr_path) {
  std::vector<std::string> env_strings = env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e, key = entry.substr(0, entry.find('=') + 1);
    if (std::none_of(env.begin(), env.end(), [&](const std::string& x) { return x.rfind(key, 0) == 0; }))
      env_strings.push_back(entry);
  }
  std::vector<char*> args, envp;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  for (const std::string& e : env_strings) envp.push_back(const_cast<char*>(e.c_str()));
  args.push_back(nullptr), envp.push_back(nullptr);
  int pipe_fd[2];
  if (pipe(pipe_fd) != 0) return std::nullopt;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fd[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, pipe_fd[0]);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fd[1]);
  std::string output;
  if (rc == 0) {
    char buf[4096];
    for (ssize_t n; (n = read(pipe_fd[0], buf, sizeof buf)) > 0;) output.append(buf, size_t(n));
  }
  close(pipe_fd[0]);
  if (rc != 0) return std::nullopt;
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  return output;
}

std::string last_line(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

namespace {

using json = nlohmann::json;
using reference::SpeedCase;

const char* causal_name(CausalAlign c) {
  return c == CausalAlign::kNone ? "none" : c == CausalAlign::kTopLeft ? "top_left" : "bottom_right";
}

}  // namespace

void run_torch_peer(const std::vector<SpeedCase>& cases, bool module, const Budget& budget, int threads,
                    BenchReport& report) {
  TorchInfo& info = report.torch;
  const char* python = "/usr/bin/python3";
  if (access(python, X_OK) != 0) {
    info.error = "n/a (no /usr/bin/python3)";
    return;
  }
  json spec = {{"threads", threads},
               {"repeats", budget.fixed_repeats},
               {"max_repeats", budget.max_repeats},
               {"budget_s", budget.case_ms * 1e-3},
               {"cases", json::array()}};
  for (const SpeedCase& sc : cases) {
    const reference::Case& c = sc.problem;
    spec["cases"].push_back({{"id", sc.id}, {"kind", "attention"}, {"B", c.B}, {"Lq", c.Lq}, {"Lk", c.Lk}, {"H", c.H},
                             {"Hkv", c.Hkv}, {"D", c.D}, {"causal", causal_name(c.causal)},
                             {"dtype", c.dtype == DType::kBF16 ? "bfloat16" : "float32"}, {"backward", sc.backward},
                             {"evict", sc.decode}});
  }
  if (module)
    spec["cases"].push_back({{"id", "S5"}, {"kind", "module"}, {"B", kModuleB}, {"L", kModuleL}, {"E", kModuleE},
                             {"heads", kModuleHeads}, {"causal", true}});

  char script[] = "/tmp/multihead_torch_peer_XXXXXX";
  const int fd = mkstemp(script);
  if (fd < 0) {
    info.error = "n/a (cannot write the peer script)";
    return;
  }
  const size_t len = std::strlen(kTorchPeerSource);
  const bool written = write(fd, kTorchPeerSource, len) == ssize_t(len);
  close(fd);
  const std::string stderr_path = std::string(script) + ".err";
  // glibc would hand PyTorch's large tensors back to the OS after every call and fault
  // them in again (~0.6 GiB/s here: S1 7x slower); keeping freed memory in the heap is
  // part of PyTorch's best configuration.
  std::vector<std::string> env = {"OMP_NUM_THREADS=" + std::to_string(threads),
                                  "OPENBLAS_NUM_THREADS=" + std::to_string(threads), "MALLOC_MMAP_MAX_=0",
                                  "MALLOC_TRIM_THRESHOLD_=68719476736"};
  if (__builtin_cpu_supports("avx512f")) {
    env.push_back("OPENBLAS_CORETYPE=SkylakeX");
    env.push_back("ATEN_CPU_CAPABILITY=avx512");
  }
  const std::optional<std::string> output =
      written ? run_capture({python, script, spec.dump()}, env, stderr_path) : std::nullopt;
  const std::string err = last_line(stderr_path);
  unlink(script);
  unlink(stderr_path.c_str());
  if (!output) {
    info.error = "n/a (peer failed: " + (err.empty() ? std::string("no output") : err) + ")";
    return;
  }
  json result;
  try {
    result = json::parse(*output);
  } catch (const json::exception&) {
    info.error = "n/a (peer printed no JSON)";
    return;
  }
  if (!result.value("available", false)) {
    info.error = "n/a (" + result.value("error", std::string("torch missing")) + ")";
    return;
  }
  info.available = true;
  info.version = result.value("version", "");
  info.threads = result.value("threads", 0);
  info.openblas_config = result.value("openblas_config", "");
  for (const auto& path : result["blas"]) info.blas += (info.blas.empty() ? "" : ", ") + path.get<std::string>();
  for (Row& row : report.rows) {
    if (!result["cases"].contains(row.id)) continue;
    const json& r = result["cases"][row.id];
    if (r.contains("median_ms")) {
      row.torch_ms = r["median_ms"].get<double>();
      row.torch_note = format("%d repeats, min %.3f ms", r.value("repeats", 0), r.value("min_ms", 0.0));
    } else {
      row.torch_note = "n/a (" + r.value("error", std::string("failed")) + ")";
    }
  }
}

}  // namespace multihead::bench
