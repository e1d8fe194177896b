# Builds and runs the consumer project in this directory against larder.
#
#   cmake -DLARDER_CONSUME=subdirectory|package
#         -DLARDER_SOURCE_DIR=<larder source dir>
#         -DWORK_DIR=<scratch dir, wiped first>
#         [-DCONSUMER_SOURCE_DIR=<this dir>] [-DGENERATOR=<generator>]
#         [-DMAKE_PROGRAM=<path>] [-DCXX_COMPILER=<path>] [-DWITH_REDIS=ON|OFF]
#         -P run.cmake
#
# package mode: configures a fresh larder build (tests and examples off),
# installs it to <WORK_DIR>/prefix, then consumes it with find_package(), and
# also checks that requesting a nonexistent component fails cleanly.
cmake_minimum_required(VERSION 3.20)

foreach(var LARDER_CONSUME LARDER_SOURCE_DIR WORK_DIR)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "run.cmake: -D${var}=... is required")
    endif()
endforeach()
if(NOT CONSUMER_SOURCE_DIR)
    set(CONSUMER_SOURCE_DIR "${CMAKE_CURRENT_LIST_DIR}")
endif()

set(common_args "")
if(GENERATOR)
    list(APPEND common_args -G "${GENERATOR}")
endif()
if(MAKE_PROGRAM)
    list(APPEND common_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
    list(APPEND common_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()

# Runs a command, echoes it, and fails the test when it fails.
function(run_step description)
    message(STATUS "==> ${description}")
    list(JOIN ARGN " " pretty)
    message(STATUS "    ${pretty}")
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
    if(NOT result EQUAL 0)
        message(FATAL_ERROR "${description} failed (${result})")
    endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# No build type: the consumer is built unoptimized (it proves that it builds and runs;
# its speed is not measured).
set(consumer_args
    "-DLARDER_CONSUMER_WITH_REDIS=${WITH_REDIS}")

if(LARDER_CONSUME STREQUAL "subdirectory")
    list(APPEND consumer_args
        -DLARDER_CONSUME=subdirectory
        "-DLARDER_SOURCE_DIR=${LARDER_SOURCE_DIR}")
elseif(LARDER_CONSUME STREQUAL "package")
    set(prefix "${WORK_DIR}/prefix")
    run_step("configure larder for installation"
        "${CMAKE_COMMAND}" ${common_args}
            -S "${LARDER_SOURCE_DIR}" -B "${WORK_DIR}/larder-build"
            -DCMAKE_BUILD_TYPE=Release
            -DLARDER_BUILD_TESTS=OFF
            -DLARDER_BUILD_EXAMPLES=OFF
            -DLARDER_BUILD_TOOLS=OFF
            -DLARDER_BUILD_BENCHMARKS=OFF
            -DLARDER_INSTALL=ON
            "-DCMAKE_INSTALL_PREFIX=${prefix}")
    run_step("install larder to ${prefix}"
        "${CMAKE_COMMAND}" --install "${WORK_DIR}/larder-build" --prefix "${prefix}")
    list(APPEND consumer_args
        -DLARDER_CONSUME=package
        "-DCMAKE_PREFIX_PATH=${prefix}"
        # Only the freshly installed copy may satisfy find_package(larder).
        -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
else()
    message(FATAL_ERROR "LARDER_CONSUME must be 'subdirectory' or 'package', not '${LARDER_CONSUME}'")
endif()

run_step("configure consumer (${LARDER_CONSUME})"
    "${CMAKE_COMMAND}" ${common_args}
        -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/consumer-build"
        ${consumer_args})
run_step("build consumer"
    "${CMAKE_COMMAND}" --build "${WORK_DIR}/consumer-build" --config Release)

find_program(consumer_exe larder_consumer
    PATHS "${WORK_DIR}/consumer-build"
    PATH_SUFFIXES Release Debug
    NO_DEFAULT_PATH REQUIRED)
run_step("run consumer" "${consumer_exe}")

if(LARDER_CONSUME STREQUAL "package")
    # A component that does not exist must make find_package(larder) fail with a reason.
    message(STATUS "==> find_package(larder COMPONENTS json nonexistent) must fail")
    execute_process(
        COMMAND "${CMAKE_COMMAND}" ${common_args}
            -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/consumer-missing-component"
            ${consumer_args}
            -DLARDER_CONSUMER_EXTRA_COMPONENTS=nonexistent
        RESULT_VARIABLE result
        OUTPUT_VARIABLE output
        ERROR_VARIABLE output)
    if(result EQUAL 0)
        message(FATAL_ERROR "requesting COMPONENTS nonexistent unexpectedly succeeded:\n${output}")
    endif()
    if(NOT output MATCHES "unknown component 'nonexistent'")
        message(FATAL_ERROR "missing-component failure did not give the expected reason:\n${output}")
    endif()
    message(STATUS "    failed as expected")

    # Before 1.0 a minor release may break the API: asking for 0.0 must not accept 0.1.
    message(STATUS "==> find_package(larder 0.0) must fail (SameMinorVersion while 0.x)")
    execute_process(
        COMMAND "${CMAKE_COMMAND}" ${common_args}
            -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/consumer-older-minor"
            ${consumer_args}
            -DLARDER_CONSUMER_VERSION=0.0
        RESULT_VARIABLE result
        OUTPUT_VARIABLE output
        ERROR_VARIABLE output)
    if(result EQUAL 0)
        message(FATAL_ERROR "find_package(larder 0.0) accepted this 0.1 installation:\n${output}")
    endif()
    message(STATUS "    failed as expected")

    # pkg-config: the installed larder.pc gives the flags to build the consumer without CMake.
    find_program(PKG_CONFIG_EXECUTABLE pkg-config)
    if(PKG_CONFIG_EXECUTABLE AND CXX_COMPILER)
        message(STATUS "==> pkg-config --cflags --libs larder, and a build with those flags")
        set(ENV{PKG_CONFIG_PATH} "${prefix}/share/pkgconfig")
        execute_process(
            COMMAND "${PKG_CONFIG_EXECUTABLE}" --cflags --libs larder
            RESULT_VARIABLE result
            OUTPUT_VARIABLE flags
            ERROR_VARIABLE error
            OUTPUT_STRIP_TRAILING_WHITESPACE)
        if(NOT result EQUAL 0)
            message(FATAL_ERROR "pkg-config does not know the installed larder.pc: ${error}")
        endif()
        if(NOT flags MATCHES "-I${prefix}/include")
            message(FATAL_ERROR "larder.pc does not point at ${prefix}/include: ${flags}")
        endif()
        separate_arguments(flags UNIX_COMMAND "${flags}")
        run_step("build the consumer with pkg-config's flags"
            "${CXX_COMPILER}" ${flags} "${CONSUMER_SOURCE_DIR}/main.cpp"
                -o "${WORK_DIR}/consumer-pkg-config")
        run_step("run the pkg-config consumer" "${WORK_DIR}/consumer-pkg-config")
    endif()
endif()

message(STATUS "package test (${LARDER_CONSUME}) passed")
