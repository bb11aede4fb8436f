// A hierarchical group's call as one collective of this host's shm group:
// a local phase, the phase between hosts (away from the segment), and the
// blocks that phase produced copied from their owners to everyone.
#include <algorithm>
#include <cstring>

#include "chorus/algorithms/copy.h"
#include "chorus/backends/shm/shm_group.h"
#include "chorus/backends/shm/shm_group_inl.h"

namespace chorus::shm {

void ShmGroup::run_phased(const CallDesc& desc, bool interrupted_on_the_way,
                          const std::function<void()>& local, const std::function<void()>& away,
                          char* buffer, const std::vector<Block>& blocks) {
  begin_collective(desc, interrupted_on_the_way);
  // An abort of an earlier call can only be seen before every rank passed
  // this call's first barrier: this rank restarts the call after recovering.
  // Mostly in `local`, before `away` ran; but a rank that keeps nothing of
  // the local phase (all_reduce_phase) or only agrees and crosses nothing
  // (agree_phase) arrives there without waiting, meets it in the last
  // phase's first wait, and then starts over too (its `away` carries nothing
  // between hosts).
  for (;;) {
    try {
      local();
    } catch (const RestartCall& restart) {
      recover(restart.word);
      continue;
    }
    const bool waited = !descs_unchecked_.has_value();
    away();
    try {
      gather_blocks(buffer, blocks, nullptr, nullptr, /*after_away=*/true);
      return;
    } catch (const RestartCall& restart) {
      CHORUS_CHECK(!waited, "an earlier call's abort after this call's first barrier");
      descs_unchecked_.reset();
      recover(restart.word);
    }
  }
}

void ShmGroup::agree_phase(const CallDesc& desc, bool wait) {
  const uint64_t p0 = arrivals_;
  write_desc(p0, desc);
  if (!wait) {
    arrive_unchecked(p0);
    return;
  }
  arrive_and_wait();
  check_descs(p0);
}

void ShmGroup::gather_blocks(char* buffer, const std::vector<Block>& blocks, const char* own,
                             const CallDesc* desc, bool after_away) {
  size_t longest = 0;
  const Block* mine = nullptr;
  size_t total = 0;
  for (const Block& b : blocks) {
    longest = std::max(longest, b.bytes);
    total += b.bytes;
    if (b.owner == rank_) mine = &b;
  }
  const char* staged = own != nullptr ? own : mine != nullptr ? buffer + mine->offset : nullptr;
  const size_t chunk = layout_.chunk_bytes;
  const size_t nchunks = (longest + chunk - 1) / chunk;
  const size_t nbarriers = std::max<size_t>(nchunks, 1);
  const uint64_t p0 = arrivals_;
  // Phase p0 + j: copy out chunk j - 1 of every owner's block (our own too
  // when it comes from `own`: only after the descriptors matched), stage
  // chunk j of ours (the slots rotate over three buffers, see shm_group.cc).
  for (size_t j = 0; j <= nbarriers; ++j) {
    const uint64_t phase = p0 + j;
    if (j >= 1 && j - 1 < nchunks) {
      const size_t off = (j - 1) * chunk;
      for (const Block& b : blocks) {
        if ((b.owner == rank_ && own == nullptr) || off >= b.bytes) continue;
        copy_result(buffer + b.offset + off, slot(b.owner, phase - 1),
                    std::min(chunk, b.bytes - off), total);
      }
    }
    if (mine != nullptr && j < nchunks && j * chunk < mine->bytes) {
      std::memcpy(slot(rank_, phase), staged + j * chunk, std::min(chunk, mine->bytes - j * chunk));
    }
    if (j == 0 && desc != nullptr) write_desc(phase, *desc);
    if (j < nbarriers) {
      // The first barrier waits for the owners to come back from between hosts.
      arrive_and_wait(after_away && j == 0);
      if (j == 0 && descs_unchecked_.has_value()) {
        const uint64_t published = *descs_unchecked_;
        descs_unchecked_.reset();
        check_descs(published, /*then_arrive=*/false);
      }
      if (j == 0 && desc != nullptr) check_descs(p0);
    }
  }
}

}  // namespace chorus::shm
