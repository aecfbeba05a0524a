# Installing the C library (`cmake --install BUILD --prefix P`, or `make install PREFIX=P`):
# the headers, libfragless.so and libfragless.a, libfragless_preload.so, the `fragless`
# CLI, a pkg-config file (fragless.pc) and a CMake package (find_package(fragless) gives
# fragless::fragless, the shared library, and fragless::fragless_static).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# The targets' include directory is the source tree's while building, the prefix's once
# installed.
foreach(t fragless_core fragless_shared)
  set_property(TARGET ${t} PROPERTY INTERFACE_INCLUDE_DIRECTORIES
    "$<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/include>" "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>")
endforeach()
# The static library installs as libfragless.a; the CLI and the tests link the same one.
set_target_properties(fragless_core PROPERTIES OUTPUT_NAME fragless EXPORT_NAME fragless_static)
set_target_properties(fragless_shared PROPERTIES EXPORT_NAME fragless
  VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR})

install(TARGETS fragless_shared fragless_core EXPORT fraglessTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS fragless_preload LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
# `fragless run` looks for the preload library beside itself, then in ../LIBDIR (run.c).
target_compile_definitions(fragless_cli PRIVATE FL_RUN_LIBDIR="${CMAKE_INSTALL_LIBDIR}")
install(TARGETS fragless RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES include/fragless.h include/fragless_torch.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

install(EXPORT fraglessTargets NAMESPACE fragless:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fragless)
configure_package_config_file(cmake/fraglessConfig.cmake.in
  ${CMAKE_BINARY_DIR}/fraglessConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fragless)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/fraglessConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/fraglessConfig.cmake ${CMAKE_BINARY_DIR}/fraglessConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/fragless)

# From PREFIX/LIBDIR/pkgconfig back to PREFIX: one ".." per component.
string(REGEX REPLACE "[^/]+" ".." FL_PC_TO_PREFIX "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
configure_file(cmake/fragless.pc.in ${CMAKE_BINARY_DIR}/fragless.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/fragless.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# test_install: installs into a temporary prefix and builds tests/install/consumer.c
# against it with pkg-config and with find_package.
add_test(NAME test_install COMMAND sh ${CMAKE_SOURCE_DIR}/tests/install/test_install.sh
  ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR} ${CMAKE_C_COMPILER} ${CMAKE_COMMAND} $<TARGET_FILE:fragless_shared>)
set_tests_properties(test_install PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)
