# Compiles one program that misuses larder and checks that the build fails with the message
# its "// expect:" line names, in a handful of errors rather than a page of candidates.
#
#   cmake -DCXX=<compiler> -DINCLUDE_DIR=<larder/include> -DSOURCE=<file.cpp>
#         [-DMAX_ERRORS=3] -P check.cmake
cmake_minimum_required(VERSION 3.20)

if(NOT MAX_ERRORS)
    set(MAX_ERRORS 3)
endif()
file(STRINGS "${SOURCE}" expect_lines REGEX "^// expect: ")
if(NOT expect_lines)
    message(FATAL_ERROR "${SOURCE} has no '// expect: <message>' line")
endif()
list(GET expect_lines 0 expect)
string(REGEX REPLACE "^// expect: " "" expect "${expect}")

execute_process(
    COMMAND "${CXX}" -std=c++20 -fsyntax-only -I "${INCLUDE_DIR}" "${SOURCE}"
    RESULT_VARIABLE result
    OUTPUT_VARIABLE output
    ERROR_VARIABLE output)
if(result EQUAL 0)
    message(FATAL_ERROR "${SOURCE} compiled; it must not")
endif()
string(FIND "${output}" "${expect}" at)
if(at EQUAL -1)
    message(FATAL_ERROR "the compiler's output does not say '${expect}':\n${output}")
endif()
string(REGEX MATCHALL "error:" errors "${output}")
list(LENGTH errors error_count)
if(error_count GREATER MAX_ERRORS)
    message(FATAL_ERROR
        "${error_count} errors (at most ${MAX_ERRORS} wanted) for one mistake:\n${output}")
endif()
message(STATUS "failed as expected, ${error_count} error(s), saying: ${expect}")
