// Threads used by the attention kernels (OpenMP regions). Results are bitwise identical
// for any thread count.
#pragma once

namespace multihead {

// n <= 0 restores the default (all cores).
void set_num_threads(int n);
int get_num_threads();

}  // namespace multihead
