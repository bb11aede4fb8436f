// Collectives: entry, abort recovery and descriptor agreement, the
// collectives through the segment's slots (or single copy), and split.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "chorus/algorithms/copy.h"
#include "chorus/backends/shm/shm_group.h"
#include "chorus/backends/shm/shm_group_inl.h"
#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "chorus/common/logging.h"
#include "chorus/transport/shm/cross_memory.h"

namespace chorus::shm {
namespace {

// Below this an all_reduce is one barrier: every rank reduces all slots.
constexpr size_t kSmallAllReduceBytes = 16 * 1024;

// What a rank publishes in its slot in the first phase of a single-copy call.
struct CrossMemoryOffer {
  uint64_t address;   // the rank's buffer, in its own address space
  uint32_t can_read;  // 1: this rank can read every peer's memory
  uint32_t pad;
};

}  // namespace

template <typename Body>
void ShmGroup::run_collective(const CallDesc& desc, Body&& body) {
  begin_collective(desc);
  for (;;) {
    try {
      body();
      return;
    } catch (const RestartCall& restart) {
      recover(restart.word);
    }
  }
}

void ShmGroup::begin_collective(const CallDesc& desc, std::optional<bool> on_the_way) {
  op_ = collective_name(desc.kind, desc.op);
  check_usable();
  descs_unchecked_.reset();  // a call that failed before it compared them
  ++calls_;
  ++seq_;
  RankControl& me = control(rank_);
  me.entered_op.store(static_cast<uint32_t>(desc.kind) << 8 | static_cast<uint32_t>(desc.op),
                      std::memory_order_relaxed);
  me.entered.store(seq_, std::memory_order_relaxed);
  const uint64_t interrupts = interrupt_count();
  bool interrupted_on_the_way = on_the_way.value_or(interrupts != interrupts_at_last_call_);
  interrupts_at_last_call_ = interrupts;
  const uint32_t word = header().abort_word.load();
  // An epoch ahead of ours: the others finished a recovery this rank had
  // already acknowledged (and reset for) before it was interrupted.
  if (abort_epoch(word) != epoch_) epoch_ = abort_epoch(word);
  if (!abort_flag(word)) return;
  // An abort published before we entered. Of an earlier call: this rank
  // finished that one. Of this very call, after an interrupt of this rank:
  // it never reached the call (a Jupyter interrupt stops every rank wherever
  // it is) and abandoned it like its peers. Either way the group
  // resynchronises here and this call runs normally.
  const uint32_t aborted_call = control(abort_reporter(word)).abort_call.load();
  if (on_the_way) {
    // A hierarchical call: its other phase may have failed this call for
    // every rank (a death, a disagreement), which no interrupt skips.
    const Reason why = reason_from_wire(control(abort_reporter(word)).abort_why.load());
    interrupted_on_the_way =
        interrupted_on_the_way && (why == Reason::Interrupted || why == Reason::Overlap);
  }
  if (aborted_call != calls_ || interrupted_on_the_way) {
    recover(word);
    return;
  }
  // Late for the call its peers aborted: pairing it with their next call
  // would mix two calls' data. Resynchronise, then fail this call only; the
  // next call on this rank meets the others' next call.
  const RankControl& reporter = control(abort_reporter(word));
  const std::string reason(reporter.reason, strnlen(reporter.reason, kReasonBytes));
  const int culprit = reporter.abort_culprit.load();
  recover(word);
  calls_ = 0;  // this call never ran in the new epoch
  throw PeerError(
      Said{prefix(), op_ + " #" + std::to_string(seq_) + " was aborted before this rank arrived (" +
                         reason + "); the other ranks have moved on, so the next call works"},
      failure(Reason::Late, culprit));
}

void ShmGroup::recover(uint32_t word) {
  const uint32_t epoch = abort_epoch(word);
  const uint32_t next = (epoch + 1) & 0xffffu;
  CHORUS_LOG(options_.verbose, "shm rank ", rank_, "/", size_, ": recovering from abort epoch ",
             epoch, " before ", op_);
  // Nobody touches slots again until every rank acknowledged, i.e. left the
  // failed call: resetting our own phase and sequence word is safe now.
  arrivals_ = 0;
  calls_ = 0;
  control(rank_).seq.store(0);
  control(rank_).ack.store(next);
  bell_.ring();
  wait(
      [&] {
        if (abort_epoch(header().abort_word.load()) != epoch) return true;
        for (int r = 0; r < size_; ++r) {
          if (control(r).ack.load() != next) return false;
        }
        return true;
      },
      [&](auto&& check) {
        for (int r = 0; r < size_; ++r) {
          if (control(r).ack.load() != next) check(r);
        }
      },
      WaitKind::Recovery);
  uint32_t current = header().abort_word.load();
  while (abort_epoch(current) == epoch &&
         !header().abort_word.compare_exchange_weak(current, abort_word(next, 0, false))) {
  }
  epoch_ = next;
  calls_ = 1;  // the call being entered (or restarted) is the epoch's first
  bell_.ring();
}

void ShmGroup::write_desc(uint64_t phase, const CallDesc& desc) {
  const WireDesc wire = to_wire(desc);
  std::memcpy(slot_desc(rank_, phase), &wire, sizeof wire);
}

void ShmGroup::check_descs(uint64_t phase, bool then_arrive) {
  // The usual case, cheaply: every rank wrote the same bytes we did.
  bool identical = true;
  for (int r = 0; r < size_ && identical; ++r) {
    identical = std::memcmp(slot_desc(r, phase), slot_desc(rank_, phase), sizeof(WireDesc)) == 0;
  }
  if (identical) {
    recorder().agreed();
    return;
  }
  std::vector<CallDesc> all(size_);
  bool same = true;
  for (int r = 0; r < size_; ++r) {
    WireDesc wire;
    std::memcpy(&wire, slot_desc(r, phase), sizeof wire);
    all[r] = from_wire(wire);
    same = same && all[r] == all[0];
  }
  if (same) {
    recorder().agreed();
    return;
  }
  // Every rank reads the same descriptors, so every rank raises this same
  // text, each at the same phase.
  if (then_arrive) arrive();
  throw UsageError(
      Said{prefix() + op_ + ": ranks disagree on the call: ", disagreement(all, nullptr, shown_)});
}

void ShmGroup::arrive() {
  ++arrivals_;
  control(rank_).seq.store(static_cast<uint32_t>(arrivals_));
  bell_.ring();
}

void ShmGroup::arrive_unchecked(uint64_t phase) {
  arrive();
  descs_unchecked_ = phase;
}

void ShmGroup::arrive_and_wait(bool peers_away) {
  arrive();
  const uint32_t target = static_cast<uint32_t>(arrivals_);
  wait(
      [&] {
        for (int r = 0; r < size_; ++r) {
          if (static_cast<int32_t>(control(r).seq.load() - target) < 0) return false;
        }
        return true;
      },
      [&](auto&& check) {
        for (int r = 0; r < size_; ++r) {
          if (static_cast<int32_t>(control(r).seq.load() - target) < 0) check(r);
        }
      },
      WaitKind::Collective, peers_away);
}

void ShmGroup::reduce_slots(ReduceKernel kernel, void* dst, uint64_t phase, size_t offset,
                            size_t count) const {
  // Always rank order, so every element is reduced identically on every rank.
  kernel(dst, slot(0, phase) + offset, slot(1, phase) + offset, count);
  for (int r = 2; r < size_; ++r) kernel(dst, dst, slot(r, phase) + offset, count);
}

void ShmGroup::all_reduce(const CallDesc& desc, const void* in, void* out) {
  run_collective(desc, [&] { all_reduce_phase(desc, in, out); });
}

void ShmGroup::all_reduce_phase(const CallDesc& desc, const void* in, void* out,
                                const std::vector<Block>* keep) {
  const ReduceKernel kernel = reduce_kernel(desc.dtype, desc.op);
  const size_t es = dtype_size(desc.dtype);
  const size_t count = static_cast<size_t>(desc.count);
  const size_t nbytes = count * es;
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  const uint64_t p0 = arrivals_;

  if (nbytes <= std::min(layout_.chunk_bytes, kSmallAllReduceBytes)) {
    // One barrier: everyone publishes its whole input, then reduces all of it
    // (the ranks that keep some of it).
    write_desc(p0, desc);
    if (nbytes != 0) std::memcpy(slot(rank_, p0), src, nbytes);
    const bool keeps_some =
        keep == nullptr ||
        std::any_of(keep->begin(), keep->end(), [&](const Block& b) { return b.owner == rank_; });
    if (!keeps_some) {
      arrive_unchecked(p0);
      return;
    }
    arrive_and_wait();
    check_descs(p0);
    if (count != 0) reduce_slots(kernel, dst, p0, 0, count);
    return;
  }

  // Pipeline, in phase p0 + j: copy out chunk j - 2 (reduced in slot 0),
  // reduce this rank's slice of chunk j - 1 into slot 0, stage chunk j.
  const size_t per_chunk = layout_.chunk_bytes / es;
  const size_t nchunks = (count + per_chunk - 1) / per_chunk;
  auto chunk_count = [&](size_t j) { return std::min(per_chunk, count - j * per_chunk); };
  for (size_t j = 0; j <= nchunks + 1; ++j) {
    const uint64_t phase = p0 + j;
    if (j >= 2) {
      const size_t at = (j - 2) * per_chunk * es, n = chunk_count(j - 2) * es;
      if (keep == nullptr) {
        copy_result(dst + at, slot(0, phase - 2), n, nbytes);
      } else {
        for (const Block& b : *keep) {
          const size_t lo = std::max(at, b.offset), hi = std::min(at + n, b.offset + b.bytes);
          if (b.owner == rank_ && lo < hi) {
            copy_result(dst + lo, slot(0, phase - 2) + (lo - at), hi - lo, nbytes);
          }
        }
      }
    }
    if (j >= 1 && j <= nchunks) {
      const size_t n = chunk_count(j - 1);
      const size_t lo = n * rank_ / size_;
      const size_t hi = n * (rank_ + 1) / size_;
      if (hi > lo) reduce_slots(kernel, slot(0, phase - 1) + lo * es, phase - 1, lo * es, hi - lo);
    }
    if (j < nchunks) std::memcpy(slot(rank_, phase), src + j * per_chunk * es, chunk_count(j) * es);
    if (j == 0) write_desc(phase, desc);
    if (j <= nchunks) {
      arrive_and_wait();
      if (j == 0) check_descs(p0);
    }
  }
}

void ShmGroup::all_gather(const CallDesc& desc, const void* in, void* out) {
  run_collective(desc, [&] { all_gather_phase(desc, in, out); });
}

void ShmGroup::all_gather_phase(const CallDesc& desc, const void* in, void* out) {
  const size_t nbytes = desc.nbytes();
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  if (nbytes < cross_memory_min_bytes_ || size_ < 2) {
    all_gather_chunked(desc, src, dst);
    return;
  }
  const std::vector<uint64_t> inputs = publish_address(desc, src);
  if (inputs.empty()) {
    all_gather_chunked(desc, src, dst);
    return;
  }
  // Only now that every rank's call matched: a mismatch leaves `out` untouched.
  copy_result(dst + static_cast<size_t>(rank_) * nbytes, src, nbytes, nbytes * size_);
  // Start at the next rank, so that not every rank reads rank 0 first.
  for (int k = 1; k < size_; ++k) {
    const int r = (rank_ + k) % size_;
    read_from_peer(r, inputs[r], dst + static_cast<size_t>(r) * nbytes, nbytes);
  }
  // Nobody returns (and may overwrite its input) before every reader is done.
  arrive_and_wait();
}

std::vector<uint64_t> ShmGroup::publish_address(const CallDesc& desc, const void* address) {
  const uint64_t p0 = arrivals_;
  const CrossMemoryOffer mine{reinterpret_cast<uint64_t>(address), cross_memory_ ? 1u : 0u, 0};
  std::memcpy(slot(rank_, p0), &mine, sizeof mine);
  write_desc(p0, desc);
  arrive_and_wait();
  check_descs(p0);
  std::vector<uint64_t> addresses(size_);
  for (int r = 0; r < size_; ++r) {
    CrossMemoryOffer offer;
    std::memcpy(&offer, slot(r, p0), sizeof offer);
    if (offer.can_read != 1) return {};
    addresses[r] = offer.address;
  }
  return addresses;
}

void ShmGroup::read_from_peer(int r, uint64_t remote, void* local, size_t n) {
  const int err =
      read_peer_memory(peers_[r].pid(), reinterpret_cast<const void*>(remote), local, n);
  if (err == 0) return;
  // ESRCH: its memory is gone, so it is exiting, maybe before its pidfd says so.
  if (err == ESRCH) peer_died(r, WaitKind::Collective);
  check_peer_alive(r, WaitKind::Collective);  // a dead peer: abort, group unusable
  const std::string reason = rank_name(rank_) + " could not read the buffer of " + rank_name(r) +
                             " during " + op_ + ": " + std::strerror(err);
  publish_abort(reason, Reason::Aborted, rank_);
  throw PeerError(Said{prefix(), reason}, failure(Reason::Aborted, r));
}

void ShmGroup::all_gather_chunked(const CallDesc& desc, const char* src, char* dst) {
  const size_t nbytes = desc.nbytes();
  std::vector<Block> blocks;
  for (int r = 0; r < size_; ++r) blocks.push_back({r, static_cast<size_t>(r) * nbytes, nbytes});
  gather_blocks(dst, blocks, src, &desc);
}

void ShmGroup::broadcast(const CallDesc& desc, void* buf) {
  run_collective(desc, [&] { broadcast_phase(desc, buf); });
}

void ShmGroup::broadcast_phase(const CallDesc& desc, void* buf) {
  const size_t nbytes = desc.nbytes();
  char* data = static_cast<char*>(buf);
  if (nbytes < cross_memory_min_bytes_ || size_ < 2) {
    broadcast_chunked(desc, data);
    return;
  }
  // Every other rank reads the root's buffer straight into its own.
  const std::vector<uint64_t> buffers = publish_address(desc, data);
  if (buffers.empty()) {
    broadcast_chunked(desc, data);
    return;
  }
  if (desc.root != rank_) read_from_peer(desc.root, buffers[desc.root], data, nbytes);
  arrive_and_wait();  // the root keeps its buffer until every reader is done
}

void ShmGroup::broadcast_chunked(const CallDesc& desc, char* data) {
  const size_t nbytes = desc.nbytes();
  const size_t chunk = layout_.chunk_bytes;
  const size_t nchunks = (nbytes + chunk - 1) / chunk;
  const size_t nbarriers = std::max<size_t>(nchunks, 1);
  const bool is_root = desc.root == rank_;
  const uint64_t p0 = arrivals_;
  for (size_t j = 0; j <= nbarriers; ++j) {
    const uint64_t phase = p0 + j;
    if (!is_root && j >= 1 && j - 1 < nchunks) {
      const size_t off = (j - 1) * chunk;
      copy_result(data + off, slot(desc.root, phase - 1), std::min(chunk, nbytes - off), nbytes);
    }
    if (is_root && j < nchunks) {
      std::memcpy(slot(rank_, phase), data + j * chunk, std::min(chunk, nbytes - j * chunk));
    }
    if (j == 0) write_desc(phase, desc);
    if (j < nbarriers) {
      arrive_and_wait();
      if (j == 0) check_descs(p0);
    }
  }
}

void ShmGroup::reduce_scatter(const CallDesc& desc, const void* in, void* out) {
  run_collective(desc, [&] {
    const ReduceKernel kernel = reduce_kernel(desc.dtype, desc.op);
    const size_t es = dtype_size(desc.dtype);
    const size_t block = static_cast<size_t>(desc.count) / size_;  // elements per rank
    // A slot holds one piece of every block; this rank reduces piece `rank_`.
    const size_t per_piece = layout_.chunk_bytes / size_ / es;
    const size_t nchunks = (block + per_piece - 1) / per_piece;
    const size_t nbarriers = std::max<size_t>(nchunks, 1);
    auto piece_count = [&](size_t j) { return std::min(per_piece, block - j * per_piece); };
    const char* src = static_cast<const char*>(in);
    char* dst = static_cast<char*>(out);
    const uint64_t p0 = arrivals_;
    for (size_t j = 0; j <= nbarriers; ++j) {
      const uint64_t phase = p0 + j;
      if (j >= 1 && j - 1 < nchunks) {
        const size_t n = piece_count(j - 1);
        reduce_slots(kernel, dst + (j - 1) * per_piece * es, phase - 1, rank_ * n * es, n);
      }
      if (j < nchunks) {
        const size_t n = piece_count(j);
        for (int r = 0; r < size_; ++r) {
          std::memcpy(slot(rank_, phase) + r * n * es, src + (r * block + j * per_piece) * es,
                      n * es);
        }
      }
      if (j == 0) write_desc(phase, desc);
      if (j < nbarriers) {
        arrive_and_wait();
        if (j == 0) check_descs(p0);
      }
    }
  });
}

void ShmGroup::barrier() {
  CallDesc desc;
  desc.kind = Collective::Barrier;
  run_collective(desc, [&] {
    const uint64_t p0 = arrivals_;
    write_desc(p0, desc);
    arrive_and_wait();
    check_descs(p0);
  });
}

GroupPtr ShmGroup::split(int color, int key) {
  const uint64_t index = splits_++;
  const SplitPlan plan = plan_split(*this, color, key, index);
  if (plan.members.size() == 1) return make_single_group("shm");
  InitOptions sub = options_;
  sub.rank = plan.new_rank;
  sub.size = static_cast<int>(plan.members.size());
  CHORUS_LOG(options_.verbose, "shm rank ", rank_, "/", size_, ": split ", index, " color ", color,
             " -> rank ", sub.rank, "/", sub.size);
  return std::make_shared<ShmGroup>(
      sub, tag_ + ".s" + std::to_string(index) + "c" + std::to_string(color));
}

}  // namespace chorus::shm
