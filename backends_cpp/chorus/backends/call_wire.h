// A call descriptor as raw bytes: what the backends exchange to check that
// every rank makes the same call (shm: a slot header; mpi: an allgather; ring
// and mesh: the head of a call record, tcp/call_record.h).
#pragma once

#include <cstdint>

#include "chorus/backends/group_impl.h"

namespace chorus {

// Fixed-size wire form of CallDesc (little-endian host order; all ranks of a
// job run the same build).
struct WireDesc {
  uint8_t kind, op, dtype, ndim;
  int32_t root;
  uint64_t count;
  uint64_t shape_hash;
  int64_t dims[kShownDims];
};
static_assert(sizeof(WireDesc) == 56, "WireDesc is sent as raw bytes");
WireDesc to_wire(const CallDesc& desc);
CallDesc from_wire(const WireDesc& wire);

}  // namespace chorus
