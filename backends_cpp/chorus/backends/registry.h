// Backend lookup by name. Which backend "any" picks, and the cache of
// initialised groups, live in Python (chorus/group.py): the choice depends on
// the environment the Python layer parses.
#pragma once

#include <string>
#include <vector>

#include "chorus/backends/group_impl.h"

namespace chorus {

// Backends compiled into this build, in the order "any" tries them.
std::vector<std::string> compiled_backends();

bool backend_is_available(const std::string& name);

// "" when backend_is_available(name), otherwise why not (for mpi: every
// library tried and why it failed to load).
std::string backend_unavailable_reason(const std::string& name);

// Process-exit hook (chorus/_mpi.py calls it from atexit): lets a backend
// that holds process-wide state release it in order. Only mpi has one: it
// frees its communicators, then MPI_Finalize, or MPI_Abort with abort=true.
// A no-op for every other backend.
void shutdown_backend(const std::string& name, bool abort);

// Builds the world group of `name`; throws BackendUnavailable for an unknown
// or unusable backend, PeerError/PeerTimeout when peers fail to connect.
GroupPtr init_backend(const std::string& name, const InitOptions& options);

}  // namespace chorus
