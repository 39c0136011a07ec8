# Test registration helpers: every test gets a layer label (engine, server, gpu, interop, tools) and `slow`
# when it takes more than about 5 s, so one layer runs alone: ctest --test-dir build -L engine -LE slow.
#
#   trams_add_gtest(TARGET name SOURCES a.cc ... [LIBS lib ...] LABELS layer ... [SLOW_TESTS regex]
#                   [TIMEOUT s] [ALSO_EMULATED])
#     A GoogleTest binary whose cases ctest discovers one by one (TRAMS_TEST_DATA_DIR is tests/). Cases
#     whose name matches SLOW_TESTS also get `slow`. ALSO_EMULATED registers every case a second time as
#     emulated/<case>, run with TRAMS_TEST_DEVICE=emulated and the extra label `emulated`.
#   trams_add_script_test(NAME name LABELS layer ... COMMAND ...)
#     add_test + labels; other properties (environment, timeout) with set_tests_properties afterwards.
#   trams_label_tests_of(TESTS name ... LABELS label ...)
#     Labels for tests that client/ or bench/ register (next to the binaries they drive).

get_filename_component(TRAMS_TESTS_DIR ${CMAKE_CURRENT_LIST_DIR} DIRECTORY)  # tests/

# Labels go on after discovery: gtest_discover_tests' PROPERTIES cannot carry a list (it splits at ';'),
# so a file that ctest includes after the discovery script labels each case of `test_list`.
function(_trams_label_discovered target test_list labels slow_regex)
  set(_file ${CMAKE_CURRENT_BINARY_DIR}/${target}_${test_list}_labels.cmake)
  set(_script "if(DEFINED ${test_list})\n  foreach(_case IN LISTS ${test_list})\n")
  string(APPEND _script "    set(_labels \"${labels}\")\n")
  if(slow_regex)
    string(APPEND _script "    if(_case MATCHES [==[${slow_regex}]==])\n      list(APPEND _labels slow)\n    endif()\n")
  endif()
  string(APPEND _script "    set_tests_properties(\"\${_case}\" PROPERTIES LABELS \"\${_labels}\")\n  endforeach()\nendif()\n")
  file(WRITE ${_file} "${_script}")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${_file})
endfunction()

function(trams_add_gtest)
  cmake_parse_arguments(PARSE_ARGV 0 arg "ALSO_EMULATED" "TARGET;SLOW_TESTS;TIMEOUT" "SOURCES;LIBS;LABELS")
  if(NOT arg_TARGET OR NOT arg_SOURCES OR NOT arg_LABELS)
    message(FATAL_ERROR "trams_add_gtest needs TARGET, SOURCES and LABELS")
  endif()
  add_executable(${arg_TARGET} ${arg_SOURCES})
  target_link_libraries(${arg_TARGET} PRIVATE ${arg_LIBS} GTest::gmock GTest::gtest_main)
  target_include_directories(${arg_TARGET} PRIVATE ${PROJECT_SOURCE_DIR})  # "tests/testing/..." includes
  target_compile_definitions(${arg_TARGET} PRIVATE TRAMS_TEST_DATA_DIR="${TRAMS_TESTS_DIR}")
  set(_properties)
  if(arg_TIMEOUT)
    set(_properties PROPERTIES TIMEOUT ${arg_TIMEOUT})
  endif()
  gtest_discover_tests(${arg_TARGET} DISCOVERY_TIMEOUT 60 TEST_LIST ${arg_TARGET}_TESTS ${_properties})
  _trams_label_discovered(${arg_TARGET} ${arg_TARGET}_TESTS "${arg_LABELS}" "${arg_SLOW_TESTS}")
  if(arg_ALSO_EMULATED)
    # The same cases over the CUDA orchestration path, run by its host emulation (no GPU needed).
    gtest_discover_tests(${arg_TARGET} DISCOVERY_TIMEOUT 60 TEST_PREFIX "emulated/"
                         TEST_LIST ${arg_TARGET}_EMULATED_TESTS
                         PROPERTIES ENVIRONMENT "TRAMS_TEST_DEVICE=emulated" ${_properties})
    _trams_label_discovered(${arg_TARGET} ${arg_TARGET}_EMULATED_TESTS "${arg_LABELS};emulated" "${arg_SLOW_TESTS}")
  endif()
endfunction()

function(trams_add_script_test)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "NAME;WORKING_DIRECTORY" "LABELS;COMMAND")
  if(NOT arg_NAME OR NOT arg_COMMAND OR NOT arg_LABELS)
    message(FATAL_ERROR "trams_add_script_test needs NAME, COMMAND and LABELS")
  endif()
  set(_wd)
  if(arg_WORKING_DIRECTORY)
    set(_wd WORKING_DIRECTORY ${arg_WORKING_DIRECTORY})
  endif()
  add_test(NAME ${arg_NAME} COMMAND ${arg_COMMAND} ${_wd})
  set_property(TEST ${arg_NAME} PROPERTY LABELS ${arg_LABELS})
endfunction()

# Labels for tests that a folder read before tests/ registers (client/, bench/: next to the binaries they
# drive). set_property(TEST) reaches only this folder's tests in CMake 3.25, so ctest sets them instead, from
# a file it reads with this folder's tests, after the earlier folders'. The list replaces the labels the
# other folder gave, so it must name them too.
function(trams_label_tests_of)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "" "TESTS;LABELS")
  string(MAKE_C_IDENTIFIER "${arg_TESTS}" _id)
  set(_file ${CMAKE_CURRENT_BINARY_DIR}/labels_of_${_id}.cmake)
  set(_script "")
  foreach(_test IN LISTS arg_TESTS)
    string(APPEND _script "set_tests_properties(${_test} PROPERTIES LABELS \"${arg_LABELS}\")\n")
  endforeach()
  file(WRITE ${_file} "${_script}")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${_file})
endfunction()
