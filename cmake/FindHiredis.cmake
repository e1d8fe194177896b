# FindHiredis
# -----------
#
# Finds the hiredis C client library for Redis.
#
# Works with:
#   * upstream hiredis >= 1.0, which installs hiredis-config.cmake with the
#     imported target hiredis::hiredis (used when present), and
#   * distribution packages without a usable CMake package, e.g. Debian 12's
#     libhiredis-dev 0.14.1. Its HiredisConfig.cmake fails on a versionless
#     find_package(Hiredis) and defines no target, so it is never consulted:
#     call this module with find_package(Hiredis MODULE ...).
#
# Imported target:
#   hiredis::hiredis
#
# Result variables:
#   Hiredis_FOUND         true when hiredis was found
#   Hiredis_VERSION       version parsed from hiredis/hiredis.h (or the upstream config)
#   Hiredis_INCLUDE_DIRS  include directory (contains hiredis/hiredis.h)
#   Hiredis_LIBRARIES     libraries to link (hiredis::hiredis)
#
# Cache variables:
#   Hiredis_INCLUDE_DIR, Hiredis_LIBRARY

include(FindPackageHandleStandardArgs)

# Reads HIREDIS_MAJOR/MINOR/PATCH from <dir>/hiredis/hiredis.h.
function(_hiredis_version_from_header include_dir out_var)
    set(_header "${include_dir}/hiredis/hiredis.h")
    if(NOT EXISTS "${_header}")
        return()
    endif()
    file(STRINGS "${_header}" _defines REGEX "^#define[ \t]+HIREDIS_(MAJOR|MINOR|PATCH)[ \t]+[0-9]+")
    foreach(_part MAJOR MINOR PATCH)
        set(_value "")
        foreach(_line IN LISTS _defines)
            if(_line MATCHES "^#define[ \t]+HIREDIS_${_part}[ \t]+([0-9]+)")
                set(_value "${CMAKE_MATCH_1}")
            endif()
        endforeach()
        if(_value STREQUAL "")
            return()
        endif()
        set(_${_part} "${_value}")
    endforeach()
    set(${out_var} "${_MAJOR}.${_MINOR}.${_PATCH}" PARENT_SCOPE)
endfunction()

# 1) Upstream hiredis >= 1.0 config. CONFIGS names the upstream file explicitly, so the
#    lookup can never pick up a differently named HiredisConfig.cmake (not even on a
#    case-insensitive file system). No version is passed; the version check is done below.
#    Skipped once the plain search below has populated the cache.
if(NOT Hiredis_INCLUDE_DIR AND NOT Hiredis_LIBRARY)
    find_package(hiredis CONFIG QUIET CONFIGS hiredis-config.cmake)
endif()

if(hiredis_FOUND AND TARGET hiredis::hiredis)
    set(Hiredis_VERSION "${hiredis_VERSION}")
    set(Hiredis_INCLUDE_DIRS "")
    if(hiredis_INCLUDE_DIRS)
        set(Hiredis_INCLUDE_DIRS "${hiredis_INCLUDE_DIRS}")
    else()
        get_target_property(_hiredis_incs hiredis::hiredis INTERFACE_INCLUDE_DIRECTORIES)
        if(_hiredis_incs)
            set(Hiredis_INCLUDE_DIRS "${_hiredis_incs}")
        endif()
    endif()
    if(NOT Hiredis_VERSION)
        foreach(_dir IN LISTS Hiredis_INCLUDE_DIRS)
            _hiredis_version_from_header("${_dir}" Hiredis_VERSION)
            if(Hiredis_VERSION)
                break()
            endif()
        endforeach()
    endif()
    set(Hiredis_LIBRARIES hiredis::hiredis)
    set(_hiredis_location "${hiredis_DIR}")
    if(NOT _hiredis_location)
        set(_hiredis_location "hiredis::hiredis")
    endif()
    find_package_handle_standard_args(Hiredis
        REQUIRED_VARS _hiredis_location
        VERSION_VAR Hiredis_VERSION)
    unset(_hiredis_incs)
    unset(_hiredis_location)
    return()
endif()

# 2) Plain header + library search (pkg-config only provides hints).
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
    pkg_check_modules(PC_HIREDIS QUIET hiredis)
endif()

# Some hiredis.pc files point at <prefix>/include/hiredis: also hint the parent directory.
set(_hiredis_include_hints "")
foreach(_dir IN LISTS PC_HIREDIS_INCLUDEDIR PC_HIREDIS_INCLUDE_DIRS)
    get_filename_component(_parent "${_dir}" DIRECTORY)
    list(APPEND _hiredis_include_hints "${_dir}" "${_parent}")
endforeach()

find_path(Hiredis_INCLUDE_DIR
    NAMES hiredis/hiredis.h
    HINTS ${_hiredis_include_hints}
    DOC "Directory containing hiredis/hiredis.h")
unset(_hiredis_include_hints)
unset(_parent)

find_library(Hiredis_LIBRARY
    NAMES hiredis
    HINTS ${PC_HIREDIS_LIBDIR} ${PC_HIREDIS_LIBRARY_DIRS}
    DOC "The hiredis library")

set(Hiredis_VERSION "")
if(Hiredis_INCLUDE_DIR)
    _hiredis_version_from_header("${Hiredis_INCLUDE_DIR}" Hiredis_VERSION)
endif()
if(NOT Hiredis_VERSION AND PC_HIREDIS_VERSION)
    set(Hiredis_VERSION "${PC_HIREDIS_VERSION}")
endif()

find_package_handle_standard_args(Hiredis
    REQUIRED_VARS Hiredis_LIBRARY Hiredis_INCLUDE_DIR
    VERSION_VAR Hiredis_VERSION)

if(Hiredis_FOUND)
    set(Hiredis_INCLUDE_DIRS "${Hiredis_INCLUDE_DIR}")
    set(Hiredis_LIBRARIES hiredis::hiredis)
    if(NOT TARGET hiredis::hiredis)
        add_library(hiredis::hiredis UNKNOWN IMPORTED)
        set_target_properties(hiredis::hiredis PROPERTIES
            IMPORTED_LOCATION "${Hiredis_LIBRARY}"
            INTERFACE_INCLUDE_DIRECTORIES "${Hiredis_INCLUDE_DIR}")
    endif()
endif()

mark_as_advanced(Hiredis_INCLUDE_DIR Hiredis_LIBRARY)
