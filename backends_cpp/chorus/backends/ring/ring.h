// TCP ring backend: rank r accepts from r-1 and connects to r+1.
#pragma once

#include "chorus/backends/group_impl.h"

namespace chorus::ring {

bool is_available();
GroupPtr init(const InitOptions& options);

}  // namespace chorus::ring
