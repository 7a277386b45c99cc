# OpenBLAS for the GEMMs, preferring Debian's OpenMP build. Our kernels parallelise with
# OpenMP; the default pthread build keeps a second pool of threads that spin against
# ours on every small GEMM (the demo trained 2.7x slower with it on 2 cores). The OpenMP
# build shares our pool and runs single-threaded inside a parallel region.
# -DMULTIHEAD_OPENBLAS_OPENMP=OFF (or an explicit OpenBLAS_DIR) takes the default build.
option(MULTIHEAD_OPENBLAS_OPENMP "Link Debian's OpenMP build of OpenBLAS when installed" ON)
set(_multihead_openblas_openmp_dir "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp/cmake/openblas")
if(MULTIHEAD_OPENBLAS_OPENMP AND NOT OpenBLAS_DIR AND EXISTS "${_multihead_openblas_openmp_dir}/OpenBLASConfig.cmake")
  set(OpenBLAS_DIR "${_multihead_openblas_openmp_dir}" CACHE PATH "OpenBLASConfig.cmake folder" FORCE)
endif()
find_package(OpenBLAS CONFIG REQUIRED)
if(NOT _multihead_openblas_reported)
  set(_multihead_openblas_reported ON CACHE INTERNAL "")
  message(STATUS "multihead: OpenBLAS ${OpenBLAS_VERSION} from ${OpenBLAS_LIBRARIES}")
endif()
