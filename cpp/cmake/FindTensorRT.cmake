# FindTensorRT
# ------------
# TensorRT ships no CMake package config, so this module finds it:
#
#   NvInfer.h and libnvinfer under, in order: the TensorRT_ROOT variable, the TensorRT_ROOT and
#   TENSORRT_ROOT environment variables, then the standard prefixes (CMake adds the multiarch
#   directories of Debian/Ubuntu packages, e.g. /usr/include/x86_64-linux-gnu) and the usual
#   tarball locations /usr/local/TensorRT and /opt/tensorrt.
#
# Result variables:
#   TensorRT_FOUND, TensorRT_INCLUDE_DIR, TensorRT_LIBRARY,
#   TensorRT_VERSION (major.minor.patch from NvInferVersion.h), TensorRT_VERSION_MAJOR/MINOR/PATCH
# Imported target:
#   TensorRT::nvinfer

set(_tensorrt_hints ${TensorRT_ROOT} $ENV{TensorRT_ROOT} $ENV{TENSORRT_ROOT})
set(_tensorrt_paths /usr/local/TensorRT /opt/tensorrt)

find_path(TensorRT_INCLUDE_DIR NvInfer.h
  HINTS ${_tensorrt_hints}
  PATHS ${_tensorrt_paths}
  PATH_SUFFIXES include)
# A pip wheel (tensorrt_libs) holds only versioned names such as libnvinfer.so.10.
find_library(TensorRT_LIBRARY
  NAMES nvinfer nvinfer_10 nvinfer_11 libnvinfer.so.11 libnvinfer.so.10
  HINTS ${_tensorrt_hints}
  PATHS ${_tensorrt_paths}
  PATH_SUFFIXES lib lib64 lib/x64)

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
  add_library(TensorRT::nvinfer UNKNOWN IMPORTED)
  set_target_properties(TensorRT::nvinfer PROPERTIES
    IMPORTED_LOCATION "${TensorRT_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
endif()

mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_LIBRARY)
