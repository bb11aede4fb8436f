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

// Builds the world group of `name`; throws BackendUnavailable for an unknown
// or unusable backend, PeerError/PeerTimeout when peers fail to connect.
GroupPtr init_backend(const std::string& name, const InitOptions& options);

}  // namespace chorus
