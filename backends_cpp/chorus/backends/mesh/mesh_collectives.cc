// Collectives: the record round (mesh_record_round.cc: descriptor agreement,
// and the whole input when it is small), then the direct algorithms for
// large inputs.
#include <cstdio>
#include <cstring>

#include "chorus/algorithms/reduce.h"
#include "chorus/backends/call_wire.h"
#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/mesh/wire.h"
#include "chorus/backends/tcp/call_record.h"
#include "chorus/backends/tcp/split.h"
#include "chorus/common/logging.h"

namespace chorus::mesh {

std::vector<std::vector<uint8_t>> MeshGroup::agree(const CallDesc& desc, const void* data, size_t n,
                                                   bool whole_call) {
  auto records = start_call(call_record(desc, data, n), whole_call);
  agree_on_records(records, desc, small_bytes_, config_, ctx_, op_, recorder());
  return records;
}

void MeshGroup::all_reduce(const CallDesc& desc, const void* in, void* out) {
  const ReduceKernel kernel = reduce_kernel(desc.dtype, desc.op);
  const size_t nbytes = desc.nbytes();
  const size_t elem = dtype_size(desc.dtype);
  run(collective_name(desc.kind, desc.op), Kind::Collective, -1, [&] {
    const bool inline_data = small(nbytes);
    auto records = agree(desc, in, inline_data ? nbytes : 0, inline_data);
    auto* dst = static_cast<uint8_t*>(out);
    if (inline_data) {
      // Every rank reduces every input in rank order: the same bits everywhere.
      std::vector<const uint8_t*> parts;
      for (const auto& r : records) parts.push_back(record_payload(r));
      algo::reduce_in_rank_order(kernel, parts, desc.count, elem, dst);
      return;
    }
    algo::mesh_all_reduce(*this, kernel, elem, desc.count, segment_bytes_,
                          static_cast<const uint8_t*>(in), dst);
  });
}

void MeshGroup::reduce_scatter(const CallDesc& desc, const void* in, void* out) {
  const size_t block_count = desc.count / static_cast<uint64_t>(config_.size);
  std::vector<algo::Pieces> blocks;
  for (const algo::Block& b : algo::blocks_fixed(block_count, dtype_size(desc.dtype), config_.size))
    blocks.push_back({b});
  reduce_scatter_pieces(desc, blocks, in, out);
}

void MeshGroup::reduce_scatter_pieces(const CallDesc& desc, const std::vector<algo::Pieces>& blocks,
                                      const void* in, void* out) {
  const ReduceKernel kernel = reduce_kernel(desc.dtype, desc.op);
  const size_t nbytes = desc.nbytes();
  const size_t elem = dtype_size(desc.dtype);
  run(collective_name(desc.kind, desc.op), Kind::Collective, -1, [&] {
    const auto* src = static_cast<const uint8_t*>(in);
    auto* dst = static_cast<uint8_t*>(out);
    if (!small(nbytes)) {
      agree(desc, in, 0, false);
      algo::mesh_reduce_scatter(*this, blocks, kernel, elem, segment_bytes_, src, dst);
      return;
    }
    // The record carries every block, one after another: rank b's is
    // [at[b], at[b + 1]).
    std::vector<uint8_t> packed;
    std::vector<size_t> at = {0};
    for (const algo::Pieces& block : blocks) {
      for (const algo::Block& piece : block) {
        packed.insert(packed.end(), src + piece.offset, src + piece.offset + piece.length);
      }
      at.push_back(packed.size());
    }
    CHORUS_CHECK(packed.size() == nbytes, "the blocks hold the call's elements");
    auto records = agree(desc, packed.data(), nbytes, true);
    const size_t mine = at[config_.rank];
    const size_t length = at[config_.rank + 1] - mine;
    std::vector<const uint8_t*> parts;
    for (const auto& r : records) parts.push_back(record_payload(r) + mine);
    algo::reduce_in_rank_order(kernel, parts, length / elem, elem, dst);
  });
}

void MeshGroup::all_gather(const CallDesc& desc, const void* in, void* out) {
  const size_t nbytes = desc.nbytes();
  run(collective_name(desc.kind, desc.op), Kind::Collective, -1, [&] {
    const bool inline_data = small(nbytes);
    auto records = agree(desc, in, inline_data ? nbytes : 0, inline_data);
    auto* dst = static_cast<uint8_t*>(out);
    if (inline_data) {
      gather_from_records(records, nbytes, dst);
      return;
    }
    std::memmove(dst + static_cast<size_t>(config_.rank) * nbytes, in, nbytes);
    const auto blocks = algo::blocks_fixed(desc.count, dtype_size(desc.dtype), config_.size);
    algo::mesh_all_gather(*this, blocks, segment_bytes_, dst);
  });
}

void MeshGroup::broadcast(const CallDesc& desc, void* buf) {
  const size_t nbytes = desc.nbytes();
  run(collective_name(desc.kind, desc.op), Kind::Collective, -1, [&] {
    const bool inline_data = small(nbytes);
    const bool root = desc.root == config_.rank;
    auto records = agree(desc, buf, inline_data && root ? nbytes : 0, inline_data);
    if (inline_data) {
      if (!root && nbytes) std::memcpy(buf, record_payload(records[desc.root]), nbytes);
      return;
    }
    algo::mesh_broadcast(*this, desc.root, dtype_size(desc.dtype), desc.count, segment_bytes_,
                         static_cast<uint8_t*>(buf));
  });
}

void MeshGroup::barrier() {
  CallDesc desc;
  desc.kind = Collective::Barrier;
  run("barrier", Kind::Collective, -1, [&] { agree(desc, nullptr, 0, true); });
}

GroupPtr MeshGroup::split(int color, int key) {
  // Every pair of a mesh is connected (reachability taken as symmetric).
  tcp_split::Child child = tcp_split::split_child(*this, config_, color, key, split_count_++,
                                                  [](int, int) { return true; });
  if (child.config.size == 1) return make_single_group("mesh");
  CHORUS_LOG(config_.verbose, ctx_.prefix(), "split color ", color, ": rank ", child.config.rank,
             "/", child.config.size, " of group ", child.config.group_path);
  return std::make_shared<MeshGroup>(std::move(child.config), std::move(child.listeners));
}

}  // namespace chorus::mesh
