# FindTensorRT
# ------------
# Finds TensorRT in two ways, in this order:
#
#   1. The CMake package config that TensorRT's tar/zip packages ship since 11.2.1,
#      find_package(TensorRT-Enterprise CONFIG) (the product name of the package file names,
#      TensorRT-Enterprise-<version>-<os>-<arch>-cuda-<x.y>-...). Its exported target names are not
#      written in any documentation we could read, so the first of _tensorrt_config_targets that it
#      defines is used (TensorRT_CONFIG_TARGET says which; confirm on the first machine with 11.2.1+).
#      -DTensorRT_NO_CONFIG=ON skips this step.
#   2. Up to 11.2 TensorRT shipped no config: NvInfer.h and libnvinfer under, in order: the
#      TensorRT_ROOT variable, the TensorRT_ROOT and TENSORRT_ROOT environment variables, then the
#      standard prefixes (CMake adds the multiarch directories of Debian/Ubuntu packages, e.g.
#      /usr/include/x86_64-linux-gnu) and the usual tarball locations /usr/local/TensorRT and /opt/tensorrt.
#
# Result variables:
#   TensorRT_FOUND, TensorRT_INCLUDE_DIR, TensorRT_LIBRARY (a file, or the config's target),
#   TensorRT_VERSION (major.minor.patch from NvInferVersion.h), TensorRT_VERSION_MAJOR/MINOR/PATCH,
#   TensorRT_CONFIG_TARGET (set when found through the package config)
# Imported target:
#   TensorRT::nvinfer

set(_tensorrt_hints ${TensorRT_ROOT} $ENV{TensorRT_ROOT} $ENV{TENSORRT_ROOT})
set(_tensorrt_paths /usr/local/TensorRT /opt/tensorrt)
set(_tensorrt_config_targets
  TensorRT::nvinfer TensorRT-Enterprise::nvinfer TensorRT::NvInfer TensorRT-Enterprise::NvInfer)

if(NOT TensorRT_NO_CONFIG AND NOT TensorRT_INCLUDE_DIR)
  find_package(TensorRT-Enterprise CONFIG QUIET HINTS ${_tensorrt_hints} PATHS ${_tensorrt_paths})
  if(TensorRT-Enterprise_FOUND)
    foreach(_tensorrt_target IN LISTS _tensorrt_config_targets)
      if(TARGET ${_tensorrt_target})
        set(TensorRT_CONFIG_TARGET ${_tensorrt_target})
        break()
      endif()
    endforeach()
    if(TensorRT_CONFIG_TARGET)
      get_target_property(_tensorrt_includes ${TensorRT_CONFIG_TARGET} INTERFACE_INCLUDE_DIRECTORIES)
      find_path(TensorRT_INCLUDE_DIR NvInfer.h NvInferVersion.h PATHS ${_tensorrt_includes} NO_DEFAULT_PATH)
      set(TensorRT_LIBRARY ${TensorRT_CONFIG_TARGET})
    else()
      message(STATUS "FindTensorRT: ${TensorRT-Enterprise_DIR} defines none of ${_tensorrt_config_targets}; "
                     "searching for NvInfer.h and libnvinfer instead")
    endif()
  endif()
endif()

find_path(TensorRT_INCLUDE_DIR NvInfer.h
  HINTS ${_tensorrt_hints}
  PATHS ${_tensorrt_paths}
  PATH_SUFFIXES include)
# A pip wheel (tensorrt_libs) holds only versioned names such as libnvinfer.so.10.
if(NOT TensorRT_CONFIG_TARGET)
  find_library(TensorRT_LIBRARY
    NAMES nvinfer nvinfer_10 nvinfer_11 libnvinfer.so.11 libnvinfer.so.10
    HINTS ${_tensorrt_hints}
    PATHS ${_tensorrt_paths}
    PATH_SUFFIXES lib lib64 lib/x64)
endif()

# NvInferVersion.h states the version in one of two ways:
#   #define NV_TENSORRT_MAJOR 8                      (TensorRT 8.x and some 10.x packages)
#   #define TRT_MAJOR_ENTERPRISE 10                  (TensorRT 10.x / 11.x, with
#   #define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE    NV_TENSORRT_MAJOR an alias of it)
function(_tensorrt_version_field header_text part out_var)
  string(TOUPPER "${part}" PART)
  if(header_text MATCHES "#define[ \t]+NV_TENSORRT_${PART}[ \t]+([0-9]+)")
    set(${out_var} "${CMAKE_MATCH_1}" PARENT_SCOPE)
  elseif(header_text MATCHES "#define[ \t]+TRT_${PART}_ENTERPRISE[ \t]+([0-9]+)")
    set(${out_var} "${CMAKE_MATCH_1}" PARENT_SCOPE)
  else()
    set(${out_var} "" PARENT_SCOPE)
  endif()
endfunction()

if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
  file(READ "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _tensorrt_version_header)
  _tensorrt_version_field("${_tensorrt_version_header}" major TensorRT_VERSION_MAJOR)
  _tensorrt_version_field("${_tensorrt_version_header}" minor TensorRT_VERSION_MINOR)
  _tensorrt_version_field("${_tensorrt_version_header}" patch TensorRT_VERSION_PATCH)
  if(NOT TensorRT_VERSION_MAJOR STREQUAL "")
    set(TensorRT_VERSION "${TensorRT_VERSION_MAJOR}.${TensorRT_VERSION_MINOR}.${TensorRT_VERSION_PATCH}")
  endif()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT
  REQUIRED_VARS TensorRT_LIBRARY TensorRT_INCLUDE_DIR
  VERSION_VAR TensorRT_VERSION)

if(TensorRT_FOUND AND NOT TARGET TensorRT::nvinfer)
  if(TensorRT_CONFIG_TARGET)
    add_library(TensorRT::nvinfer INTERFACE IMPORTED)
    set_target_properties(TensorRT::nvinfer PROPERTIES INTERFACE_LINK_LIBRARIES ${TensorRT_CONFIG_TARGET})
  else()
    add_library(TensorRT::nvinfer UNKNOWN IMPORTED)
    set_target_properties(TensorRT::nvinfer PROPERTIES
      IMPORTED_LOCATION "${TensorRT_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
  endif()
endif()

mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_LIBRARY)
