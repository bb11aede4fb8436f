// Shared-memory backend: every rank of the group on one host.
#pragma once

#include "chorus/backends/group_impl.h"

namespace chorus::shm {

bool is_available();
GroupPtr init(const InitOptions& options);

}  // namespace chorus::shm
