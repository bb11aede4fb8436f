# CMake generated Testfile for 
# Source directory: /work/main/backends_cpp
# Build directory: /work/main/build/dev
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
include("/work/main/build/dev/chorus_cpp_tests[1]_include.cmake")
