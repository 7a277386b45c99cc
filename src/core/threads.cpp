#include "multihead/threads.hpp"

#include <omp.h>

#include <atomic>

namespace multihead {

static std::atomic<int> g_num_threads{0};

void set_num_threads(int n) { g_num_threads.store(n > 0 ? n : 0); }

int get_num_threads() {
  const int n = g_num_threads.load();
  return n > 0 ? n : omp_get_num_procs();
}

}  // namespace multihead
