#include "chorus/backends/call_wire.h"

namespace chorus {

WireDesc to_wire(const CallDesc& desc) {
  WireDesc wire{};
  wire.kind = static_cast<uint8_t>(desc.kind);
  wire.op = static_cast<uint8_t>(desc.op);
  wire.dtype = static_cast<uint8_t>(desc.dtype);
  wire.root = desc.root;
  wire.count = desc.count;
  wire.shape_hash = desc.shape_hash;
  wire.ndim = desc.ndim;
  for (int i = 0; i < kShownDims; ++i) wire.dims[i] = desc.dims[i];
  return wire;
}

CallDesc from_wire(const WireDesc& wire) {
  CallDesc desc;
  desc.kind = static_cast<Collective>(wire.kind);
  desc.op = static_cast<ReduceOp>(wire.op);
  desc.dtype = static_cast<Dtype>(wire.dtype);
  desc.root = wire.root;
  desc.count = wire.count;
  desc.shape_hash = wire.shape_hash;
  desc.ndim = wire.ndim;
  for (int i = 0; i < kShownDims; ++i) desc.dims[i] = wire.dims[i];
  return desc;
}

}  // namespace chorus
