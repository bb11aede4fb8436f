// Where a call into chorus came from, for the flight recorder: the first
// Python frame outside the chorus package (the user's line), captured while
// the GIL is held and resolved to file and line only when a record is read.
#pragma once

#include <cstdint>
#include <string>

#include "convert.h"

namespace chorus::bindings {

// Hands the caller's site to the next FlightRecorder::begin on this thread.
void note_call_site();
// {"file", "line", "function", "cell"} of a recorded site, or None.
py::object site_object(uintptr_t code, int32_t offset, uint64_t cell);

}  // namespace chorus::bindings
