# Install rules and the Debian package (`cpack -G DEB` in the build tree; tests/deploy/packaging checks it).
# Layout with the package's prefix /usr: /usr/bin/{trams-server,trams-client,trams-eval}, the CUDA module
# /usr/lib/<triplet>/trams-serve/libtrams_cuda.so (when built), the model /usr/share/trams-serve/models/, the flag
# file /etc/trams-serve/trams-server.flags (a conffile) and the systemd unit trams-server.service.
# Included last from the top CMakeLists.txt, after every target exists.

include(GNUInstallDirs)
# `cpack` (and so the package test under ctest) packs what is already built and never starts a build of
# the whole tree, which CMake's default preinstall step would do.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY ON)

# Debian's serial BLIS lives outside the loader's default path (/usr/lib/<arch>/blis-serial): keep the link
# directories as RUNPATH in the installed programs too (CMake drops the build tree's RUNPATH on install).
set_target_properties(trams-server trams-eval trams-client PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
install(TARGETS trams-server trams-client trams-eval RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
if(TARGET trams_cuda)
  # A dlopen()ed plug-in private to the package: a folder of its own under the multiarch library directory
  # (as Debian packages keep private libraries), where ldconfig does not look, so CPack adds no ldconfig
  # maintainer scripts (it does for a library in /usr/lib or in a folder directly below it).
  # The systemd unit names it in $TRAMS_CUDA_MODULE. libcudart/libcublas come from NVIDIA's packages via
  # ld.so.conf, not RUNPATH (their folder differs between NVIDIA's .debs and other installs).
  install(TARGETS trams_cuda LIBRARY DESTINATION lib/${CMAKE_LIBRARY_ARCHITECTURE}/trams-serve)
endif()
install(DIRECTORY ${PROJECT_SOURCE_DIR}/models/trams-byte-books
        DESTINATION ${CMAKE_INSTALL_DATADIR}/trams-serve/models)
# Absolute: /etc whatever the prefix (a DEB's prefix is /usr, and /usr/etc is not where anyone looks).
install(FILES ${PROJECT_SOURCE_DIR}/deploy/trams-server.flags DESTINATION /etc/trams-serve)
# The unit's ExecStart names /usr/bin/trams-server, so it is right for the package's prefix only.
install(FILES ${PROJECT_SOURCE_DIR}/deploy/systemd/trams-server.service DESTINATION lib/systemd/system)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME trams-serve)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR trams-serve)
set(TRAMS_PACKAGE_MAINTAINER "trams-serve developers <trams-serve@example.org>" CACHE STRING
    "Maintainer field of the Debian package")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${TRAMS_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "gRPC inference server for Transformer-XL with TRAMS memory selection")
# CPack puts the summary first and indents these lines itself.
set(CPACK_PACKAGE_DESCRIPTION "trams-server serves long-range language models over gRPC: sessions with a
per-stream memory pool, TRAMS training-free memory selection on every segment, streaming scoring and
generation, and Prometheus metrics. With the trams-client and trams-eval command-line tools, a bundled
byte-level model and a systemd unit, trams-server.service (not enabled on install).")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # trams-serve_<version>_<arch>.deb
# Depends from dpkg-shlibdeps: Debian's gRPC, protobuf, Abseil, BLIS, ... as the binaries link them.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# dpkg-shlibdeps says libblis4, which any BLIS variant provides; the programs' RUNPATH names the serial
# one's folder, and the engine needs it serial (it runs its own thread pool; see the top CMakeLists.txt).
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libblis4-serial")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${PROJECT_SOURCE_DIR}/deploy/packaging/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
if(TARGET trams_cuda)
  # Not Depends: without them the module does not load and --device auto runs on the host. NVIDIA's
  # debian12 repository has them; dpkg-shlibdeps finds no Debian package for them (it is told to ignore
  # that), so they are named here.
  set(CPACK_DEBIAN_PACKAGE_SUGGESTS "cuda-cudart-13-0, libcublas-13-0")
endif()
include(CPack)
