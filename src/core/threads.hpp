// Thread count used by the kernels' OpenMP regions (public setter in attention.hpp).
#pragma once

namespace multihead {
int get_num_threads();
}  // namespace multihead
