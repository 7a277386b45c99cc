# `find_package(multihead)` for users' own projects: installs the library, the
# public headers and a package config that finds OpenMP for them.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS multihead multihead_warnings EXPORT multiheadTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/multihead DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT multiheadTargets NAMESPACE multihead::
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/multihead)
configure_package_config_file(cmake/multiheadConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/multiheadConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/multihead)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/multiheadConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/multiheadConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/multiheadConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/multihead)
