// Hierarchical backend: shared memory among the ranks of each host and TCP
// between hosts, in one group. See hier_group.h.
#pragma once

#include "chorus/backends/group_impl.h"

namespace chorus::hier {

bool is_available();
GroupPtr init(const InitOptions& options);

}  // namespace chorus::hier
