// TCP full-mesh backend: every pair of ranks has its own link (the lower rank
// dials the higher), so send/recv work between any two ranks, with tags, and
// small collectives take one round trip. See README.md in this folder.
#pragma once

#include "chorus/backends/group_impl.h"

namespace chorus::mesh {

bool is_available();
GroupPtr init(const InitOptions& options);

}  // namespace chorus::mesh
