// Shared by the binding files: numpy <-> chorus type conversion and the
// GIL-aware interrupt hook.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "chorus/backends/group_impl.h"

namespace chorus::bindings {

namespace py = pybind11;

// Maps a numpy dtype to ours; TypeError for object, string, datetime, ...
Dtype dtype_of(const py::array& array);

// FNV-1a over ndim and dims: ranks compare it to catch shape mismatches.
uint64_t shape_hash(const py::array& array);

// Installs the hook that turns a pending KeyboardInterrupt into Interrupted
// while the GIL is released, and restores the Python error afterwards.
void install_interrupt_hook();
// Called by the exception translator for Interrupted (GIL held).
void restore_interrupt_error(const char* message);

void register_errors(py::module_& m);
void register_group(py::module_& m);
void register_collectives(py::module_& m);
void register_debug(py::module_& m);

}  // namespace chorus::bindings
