// The ONNX Runtime peer of the KV-cache decode case: bench/ort_peer_model.py (run by
// /usr/bin/python3 with Debian's python3-onnx) writes a one-node
// com.microsoft.GroupQueryAttention model, bench/ort_peer.js runs it in onnxruntime-node
// (ORT's CPU library) under node with the same thread count; both scripts are embedded in
// the binary. scripts/install_ort.sh installs what it needs.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>

#include "bench/harness.hpp"

namespace multihead::bench {

// bench/ort_peer_model.py and bench/ort_peer.js, embedded at configure time (peer_sources.cpp).
extern const char* const kOrtPeerModelSource;
extern const char* const kOrtPeerJsSource;

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kInstallHint = "bash scripts/install_ort.sh";

bool write_file(const fs::path& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), std::streamsize(bytes));
  return bool(out);
}

bool is_file(const fs::path& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// The last line of a program's stdout that parses as a JSON object (libraries may print
// before it).
std::optional<json> last_json(const std::string& output) {
  size_t end = output.size();
  while (end > 0) {
    const size_t begin = output.rfind('\n', end - 1);
    const size_t start = begin == std::string::npos ? 0 : begin + 1;
    const std::string line = output.substr(start, end - start);
    if (!line.empty() && line[0] == '{') {
      try {
        return json::parse(line);
      } catch (const json::exception&) {
      }
    }
    if (begin == std::string::npos) break;
    end = begin;
  }
  return std::nullopt;
}

// Removes the temporary directory whatever happens.
struct TempDir {
  fs::path path;
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

OrtDecode not_available(const std::string& why) { return {std::nullopt, "n/a (" + why + ")", {}}; }

// Runs a peer program; its JSON answer, or the reason it has none.
struct Answer {
  std::optional<json> result;
  std::string error;
};
Answer run_peer(const std::vector<std::string>& argv, const std::vector<std::string>& env, const fs::path& dir,
                const std::string& what) {
  const std::string stderr_path = (dir / (what + ".err")).string();
  const std::optional<std::string> output = run_capture(argv, env, stderr_path);
  const std::string err = last_line(stderr_path);
  std::optional<json> result = output ? last_json(*output) : std::nullopt;
  if (!output) return {std::nullopt, what + " failed: " + (err.empty() ? std::string("no output") : err)};
  if (!result) return {std::nullopt, what + " printed no JSON" + (err.empty() ? std::string() : ": " + err)};
  return {std::move(result), ""};
}

OrtDecode run(const Tensor& q, const Tensor& past_k, const Tensor& past_v, const Tensor& k_new, const Tensor& v_new,
              int threads, const Budget& budget) {
  const char* node = "/usr/bin/node";
  const char* python = "/usr/bin/python3";
  if (access(node, X_OK) != 0)
    return not_available("no /usr/bin/node: apt-get install nodejs, then " + std::string(kInstallHint));
  if (access(python, X_OK) != 0) return not_available("no /usr/bin/python3");
  const char* env_dir = std::getenv("MULTIHEAD_ORT_DIR");
  const char* home = std::getenv("HOME");
  const fs::path ort_dir = env_dir && *env_dir ? fs::path(env_dir)
                           : home && *home   ? fs::path(home) / ".cache/multihead/ort"
                                             : fs::path();
  if (ort_dir.empty()) return not_available("no HOME nor MULTIHEAD_ORT_DIR to find onnxruntime-node in");
  if (!is_file(ort_dir / "node_modules/onnxruntime-node/package.json"))
    return not_available("no onnxruntime-node in " + ort_dir.string() + ": " + kInstallHint);

  // Shapes: q (1, 1, H, D), past (1, P, Hkv, D), new (1, 1, Hkv, D), all f32.
  const int64_t H = q.size(2), D = q.size(3), P = past_k.size(1), Hkv = past_k.size(2);
  auto shaped = [](const Tensor& t, int64_t s, int64_t heads, int64_t d) {
    return t.rank() == 4 && t.dtype() == DType::kF32 && t.size(0) == 1 && t.size(1) == s && t.size(2) == heads &&
           t.size(3) == d;
  };
  if (!shaped(q, 1, H, D) || !shaped(past_k, P, Hkv, D) || !shaped(past_v, P, Hkv, D) || !shaped(k_new, 1, Hkv, D) ||
      !shaped(v_new, 1, Hkv, D) || H <= 0 || Hkv <= 0 || D <= 0 || P <= 0 || H % Hkv != 0)
    return not_available("unsupported shapes");

  char dir_template[] = "/tmp/multihead_ort_peer_XXXXXX";
  if (!mkdtemp(dir_template)) return not_available("cannot create a temporary directory");
  TempDir dir{dir_template};

  // Inputs: q, k_new, v_new flattened as (1, 1, heads * D) (their layout already); the
  // past K/V transposed from (P, Hkv, D) to BNSH (Hkv, P, D).
  auto write_tensor = [&](const char* name, const Tensor& t) {
    return write_file(dir.path / name, t.data_as<float>(), size_t(t.numel()) * sizeof(float));
  };
  auto write_bnsh = [&](const char* name, const Tensor& t) {
    const float* src = t.data_as<float>();
    std::vector<float> bnsh(size_t(t.numel()));
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t p = 0; p < P; ++p)
        std::memcpy(&bnsh[size_t((h * P + p) * D)], src + (p * Hkv + h) * D, size_t(D) * sizeof(float));
    return write_file(dir.path / name, bnsh.data(), bnsh.size() * sizeof(float));
  };
  const fs::path model_script = dir.path / "ort_peer_model.py", js = dir.path / "ort_peer.js",
                 model = dir.path / "gqa.onnx", out_path = dir.path / "out.f32";
  if (!write_file(model_script, kOrtPeerModelSource, std::strlen(kOrtPeerModelSource)) ||
      !write_file(js, kOrtPeerJsSource, std::strlen(kOrtPeerJsSource)) || !write_tensor("q.f32", q) ||
      !write_tensor("k.f32", k_new) || !write_tensor("v.f32", v_new) || !write_bnsh("past_k.f32", past_k) ||
      !write_bnsh("past_v.f32", past_v))
    return not_available("cannot write the peer's files");

  const json model_spec = {{"H", H}, {"Hkv", Hkv}, {"D", D}, {"M", P + 1}, {"path", model.string()}};
  const Answer made = run_peer({python, model_script.string(), model_spec.dump()}, {}, dir.path, "model writer");
  if (!made.result) return not_available(made.error);
  if (!made.result->value("ok", false) || !is_file(model)) {
    const std::string error = made.result->value("error", std::string("no model written"));
    return not_available(error.rfind("python3-onnx missing", 0) == 0 ? error + ": " + kInstallHint : error);
  }

  const json spec = {{"ort", ort_dir.string()},
                     {"model", model.string()},
                     {"H", H},
                     {"Hkv", Hkv},
                     {"D", D},
                     {"P", P},
                     {"threads", threads},
                     {"repeats", budget.fixed_repeats},
                     {"max_repeats", budget.max_repeats},
                     {"budget_s", budget.case_ms * 1e-3},
                     {"q", (dir.path / "q.f32").string()},
                     {"k", (dir.path / "k.f32").string()},
                     {"v", (dir.path / "v.f32").string()},
                     {"past_k", (dir.path / "past_k.f32").string()},
                     {"past_v", (dir.path / "past_v.f32").string()},
                     {"out", out_path.string()},
                     {"profile", (dir.path / "ort_profile").string()}};
  // As for PyTorch: glibc keeps freed memory instead of handing it back to the OS and
  // faulting it in again (onnxruntime-node's copies of the outputs, ORT's buffers).
  const Answer ran = run_peer({node, js.string(), spec.dump()},
                              {"MALLOC_MMAP_MAX_=0", "MALLOC_TRIM_THRESHOLD_=68719476736"}, dir.path, "node");
  if (!ran.result) return not_available(ran.error);
  const json& r = *ran.result;
  if (!r.value("available", false)) return not_available(r.value("error", std::string("onnxruntime-node failed")));
  if (!r.contains("median_ms") || !r["median_ms"].is_number()) return not_available("no time in the peer's answer");

  OrtDecode result;
  result.out.resize(size_t(H * D));
  std::ifstream in(out_path, std::ios::binary);
  in.read(reinterpret_cast<char*>(result.out.data()), std::streamsize(result.out.size() * sizeof(float)));
  if (!in || in.gcount() != std::streamsize(result.out.size() * sizeof(float)))
    return not_available("the peer's output is missing or short");
  result.ms = r["median_ms"].get<double>();
  result.note = format("ONNX Runtime %s, %d repeats, min %.3f ms", r.value("version", std::string("?")).c_str(),
                       r.value("repeats", 0), r.value("min_ms", 0.0));
  // The time is ORT's Run; node's call around it copies the caches out as well.
  if (r.value("timed", std::string()) != "model_run")
    result.note += " (node's call, the caches' copies included: no ORT profile)";
  else if (r.contains("call_median_ms") && r["call_median_ms"].is_number())
    result.note += format(" (ORT's Run; the node call %.3f ms)", r["call_median_ms"].get<double>());
  return result;
}

}  // namespace

OrtDecode run_ort_decode(const Tensor& q, const Tensor& past_k, const Tensor& past_v, const Tensor& k_new,
                         const Tensor& v_new, int threads, const Budget& budget) {
  try {
    return run(q, past_k, past_v, k_new, v_new, threads, budget);
  } catch (const std::exception& e) {
    return not_available(e.what());
  }
}

}  // namespace multihead::bench
