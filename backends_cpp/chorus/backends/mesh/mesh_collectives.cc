// Collectives: the record round (descriptor agreement, and the whole input
// when it is small), then the direct algorithms for large inputs.
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
namespace {

using tcp::Clock;

}  // namespace

std::vector<std::vector<uint8_t>> MeshGroup::start_call(std::vector<uint8_t> record) {
  // An abort held for a later call: of this call, the late-entrant rule
  // (CallCounter::skip_aborted); of a call beyond it, only a dead rank still
  // fails it.
  if (pending_abort_ && !pending_abort_->fatal) {
    const PendingAbort a = *pending_abort_;
    pending_abort_.reset();
    if (a.call == calls_.index() &&
        !calls_.skip_aborted(a.abandoned ? std::optional<Reason>(a.reason) : std::nullopt)) {
      if (a.abandoned) {
        throw LinkFailure(a.culprit, Said{ctx_.prefix() + op_ + " aborted: ", a.text}, a.text,
                          false, a.reason);
      }
      throw calls_.late(a.culprit, op_, ctx_.prefix(), a.text);
    }
  }
  if (pending_abort_) {
    const PendingAbort a = *pending_abort_;
    pending_abort_.reset();
    throw LinkFailure(a.culprit, Said{ctx_.prefix() + op_ + " aborted: ", a.text}, a.text, true,
                      a.reason);
  }
  record_ = std::move(record);
  const int n = config_.size, me = config_.rank;
  if (owes_) {
    // A peer still in an abandoned call learns from this call's record.
    acceptor_->forget_owed();
    owes_ = false;
  }
  for (int p = 0; p < n; ++p) {
    // Records of calls this rank has left (p was behind): p sends again.
    auto& coll = peers_[p].coll;
    while (!coll.empty() && coll.front().type == tcp::FrameType::Sync &&
           coll.front().aux0 < calls_.index()) {
      coll.pop_front();
    }
    peers_[p].synced = p == me;
    // A record already queued (the peer is ahead of us) proves the link.
    peers_[p].tolerant = p != me && peers_[p].coll.empty();
  }
  // Read what arrived while this rank was outside any call (check_links
  // drops non-fatal aborts while entering_).
  entering_ = true;
  try {
    progress(0);
  } catch (...) {
    entering_ = false;
    throw;
  }
  entering_ = false;
  // Each link owns its copy: a call that ends in UsageError returns before
  // its sends drained, and record_ is replaced by the next call.
  auto send_record = [&](int p) {
    peers_[p].link.post_send_owned(tcp::FrameType::Sync, calls_.index(), wire_op(op_), record_);
  };
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    Peer& peer = peers_[p];
    // A newer connection from p may already wait. Nothing of this call came
    // on it yet: until p's record does, its death means reconnecting.
    if (!dialer_of(p) && install(p)) peer.tolerant = true;
    peer.need = !peer.link.up() && peer.coll.empty();
    if (!peer.need) send_record(p);
  }
  std::vector<std::vector<uint8_t>> records(n);
  auto next_probe = Clock::now() + kProbeEvery;
  while (true) {
    bool all = true;
    const bool probe_now = Clock::now() >= next_probe;
    for (int p = 0; p < n; ++p) {
      Peer& peer = peers_[p];
      if (peer.synced) continue;
      // Dial first: connecting never needs the peer's main thread. But take
      // what p's old link delivered before it went (kept by reset): its
      // record may be there, and a new link starts with an empty queue.
      const bool queued = !peer.coll.empty();
      if (!queued && ((!dialer_of(p) && install(p)) || (peer.need && recover(p)))) {
        // A new link: what we sent on the old one is lost, and what p sent
        // on it was dropped (reset, install) before its record was taken.
        // p's record must come on this link, so until it does, the link
        // dying means reconnecting again: left intolerant, this rank would
        // ignore the dead link (check_links) and wait for that record
        // forever while p, which reset its end too, waits to be dialed.
        peer.tolerant = true;
        send_record(p);
      }
      if (peer.need && probe_now) probe(p);
      if (!peer.coll.empty()) {
        tcp::Frame f = std::move(peer.coll.front());
        peer.coll.pop_front();
        if (f.type == tcp::FrameType::Sync) peer.last_call.saw(f.aux0, f.aux1);
        if (f.type != tcp::FrameType::Sync) {
          const std::string text = "protocol error: " + who(p) + " sent a " +
                                   tcp::frame_type_name(f.type) + " frame at the start of " + op_ +
                                   " (are all ranks calling the same operations?)";
          throw LinkFailure(p, Said{ctx_.prefix(), text}, text, false, Reason::Protocol);
        }
        if (f.aux0 < calls_.index()) {
          // p is behind, in a call this rank has left: it learns so from our
          // record and sends its record of this call next.
          CHORUS_LOG(config_.verbose, ctx_.prefix(), who(p), " is at call ", f.aux0,
                     ", this rank at ", calls_.index(), ": waiting for its next record");
          all = false;
          continue;
        }
        if (f.aux0 > calls_.index()) {
          // p has left this call: it failed there (no collective completes
          // without every rank). The record is for a later call of ours.
          const uint64_t theirs = f.aux0;
          peer.coll.push_front(std::move(f));
          const std::string why = who(p) + " has left it for call #" + std::to_string(theirs);
          if (!calls_.skip_aborted()) {
            throw LateEntrant(Said{ctx_.prefix(), calls_.late_text(op_, why)},
                              Failure{Reason::Late, p});
          }
          // Interrupted on the way: this call is p's next one. Start the
          // round again under the new index; what we sent is stale for all.
          for (int q = 0; q < n; ++q) {
            peers_[q].synced = q == me;
            records[q].clear();
            if (q != me && !peers_[q].need) send_record(q);
          }
          all = false;
          break;
        }
        records[p] = std::move(f.payload);
        peer.synced = true;
        peer.tolerant = false;
      }
      all = all && peer.synced;
    }
    if (probe_now) next_probe = Clock::now() + kProbeEvery;
    if (all) break;
    progress();
  }
  records[me] = record_;
  return records;
}

std::vector<std::vector<uint8_t>> MeshGroup::agree(const CallDesc& desc, const void* data,
                                                   size_t n) {
  auto records = start_call(call_record(desc, data, n));
  agree_on_records(records, desc, small_bytes_, config_, ctx_, op_, recorder());
  return records;
}

void MeshGroup::all_reduce(const CallDesc& desc, const void* in, void* out) {
  const ReduceKernel kernel = reduce_kernel(desc.dtype, desc.op);
  const size_t nbytes = desc.nbytes();
  const size_t elem = dtype_size(desc.dtype);
  run(collective_name(desc.kind, desc.op), Kind::Collective, -1, [&] {
    const bool inline_data = small(nbytes);
    auto records = agree(desc, in, inline_data ? nbytes : 0);
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
      agree(desc, in, 0);
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
    auto records = agree(desc, packed.data(), nbytes);
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
    auto records = agree(desc, in, inline_data ? nbytes : 0);
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
    auto records = agree(desc, buf, inline_data && root ? nbytes : 0);
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
  run("barrier", Kind::Collective, -1, [&] { agree(desc, nullptr, 0); });
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
