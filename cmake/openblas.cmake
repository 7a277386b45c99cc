# OpenBLAS for the GEMMs, preferring Debian's OpenMP build. Our kernels parallelise with
# OpenMP; the default pthread build keeps a second pool of threads that spin against
# ours on every small GEMM (the demo trained 2.7x slower with it on 2 cores). The OpenMP
# build shares our pool and runs single-threaded inside a parallel region.
# -DMULTIHEAD_OPENBLAS_OPENMP=OFF takes the default build (or the one OpenBLAS_DIR names).
option(MULTIHEAD_OPENBLAS_OPENMP "Link Debian's OpenMP build of OpenBLAS when installed" ON)
set(_multihead_openblas_openmp_dir "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp/cmake/openblas")
# A normal variable, not the cache: it shadows the cached OpenBLAS_DIR while the option is
# on and leaves the cache alone, so turning the option off takes effect on the next configure.
if(MULTIHEAD_OPENBLAS_OPENMP AND EXISTS "${_multihead_openblas_openmp_dir}/OpenBLASConfig.cmake")
  set(OpenBLAS_DIR "${_multihead_openblas_openmp_dir}")
endif()
find_package(OpenBLAS CONFIG REQUIRED)
get_property(_multihead_openblas_reported GLOBAL PROPERTY MULTIHEAD_OPENBLAS_REPORTED)
if(NOT _multihead_openblas_reported)  # once per configure, not once per folder
  set_property(GLOBAL PROPERTY MULTIHEAD_OPENBLAS_REPORTED ON)
  message(STATUS "multihead: OpenBLAS ${OpenBLAS_VERSION} from ${OpenBLAS_LIBRARIES}")
endif()
