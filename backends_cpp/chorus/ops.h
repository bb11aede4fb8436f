// Validation and dispatch shared by every backend: argument checks that need
// no peer, the size-1 short cut, then one call into the GroupImpl.
#pragma once

#include <cstddef>

#include "chorus/backends/group_impl.h"

namespace chorus::ops {

void all_reduce(GroupImpl& group, const CallDesc& desc, const void* in, void* out);
void all_gather(GroupImpl& group, const CallDesc& desc, const void* in, void* out);
void reduce_scatter(GroupImpl& group, const CallDesc& desc, const void* in, void* out);
// reduce_scatter's arguments: an input with an axis (when its shape is
// known) whose first axis, and count, the group size divides. Callers that
// size the result from the first axis call it first; reduce_scatter does too.
void check_reduce_scatter(GroupImpl& group, const CallDesc& desc);
void broadcast(GroupImpl& group, const CallDesc& desc, void* buf);
void barrier(GroupImpl& group);
// tag must be >= 0; tag != 0 needs a backend with supports_tags() (mesh).
void send(GroupImpl& group, const void* buf, size_t nbytes, Dtype dtype, int dst, int tag = 0);
void recv(GroupImpl& group, void* buf, size_t nbytes, Dtype dtype, int src, int tag = 0);
GroupPtr split(GroupImpl& group, int color, int key);

}  // namespace chorus::ops
