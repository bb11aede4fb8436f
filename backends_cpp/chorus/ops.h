// Validation and dispatch shared by every backend: argument checks that need
// no peer, the size-1 short cut, then one call into the GroupImpl.
#pragma once

#include <cstddef>

#include "chorus/backends/group_impl.h"

namespace chorus::ops {

void all_reduce(GroupImpl& group, const CallDesc& desc, const void* in, void* out);
void all_gather(GroupImpl& group, const CallDesc& desc, const void* in, void* out);
void reduce_scatter(GroupImpl& group, const CallDesc& desc, const void* in, void* out);
void broadcast(GroupImpl& group, const CallDesc& desc, void* buf);
void barrier(GroupImpl& group);
void send(GroupImpl& group, const void* buf, size_t nbytes, Dtype dtype, int dst);
void recv(GroupImpl& group, void* buf, size_t nbytes, Dtype dtype, int src);
GroupPtr split(GroupImpl& group, int color, int key);

}  // namespace chorus::ops
