// Waiting and failure: a dead peer, an abort published for everyone, the
// group marked unusable. wait() itself is in shm_group_inl.h.
#include <algorithm>
#include <cstring>

#include "chorus/backends/shm/shm_group.h"
#include "chorus/backends/shm/shm_group_inl.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"

namespace chorus::shm {

void ShmGroup::check_peer_alive(int peer, WaitKind kind) {
  if (!peers_[peer].alive()) peer_died(peer, kind);
}

void ShmGroup::peer_died(int peer, WaitKind kind) {
  if (kind == WaitKind::Collective) {
    // A peer that raised in this call published why before it exited, and
    // may be gone before we look: its abort names the real culprit.
    const uint32_t word = header().abort_word.load();
    if (abort_flag(word) && control(abort_reporter(word)).abort_call.load() == calls_) {
      throw_abort(word);
    }
  }
  std::string reason =
      rank_name(peer) + " (pid " + std::to_string(peers_[peer].pid()) + ") died during " + op_;
  if (kind == WaitKind::Collective) reason += " #" + std::to_string(seq_) + last_call_of(peer);
  if (kind == WaitKind::Collective) publish_abort(reason, Reason::Died, peer);
  broken_ = reason + "; the group cannot be used any more";
  broken_by_ = peer;
  throw PeerError(Said{prefix(), reason}, failure(Reason::Died, peer));
}

// " (it was in this call)", " (the last call it entered was barrier #40: it
// never reached this one)": where a peer was, from what it published.
std::string ShmGroup::last_call_of(int peer) const {
  const RankControl& theirs = control(peer);
  const uint64_t entered = theirs.entered.load(std::memory_order_relaxed);
  if (entered == seq_) return " (it was in this call)";
  if (entered == 0) return " (it had entered no collective on this group)";
  const uint32_t op = theirs.entered_op.load(std::memory_order_relaxed);
  const std::string name =
      collective_name(static_cast<Collective>(op >> 8), static_cast<ReduceOp>(op & 0xff));
  return " (the last call it entered was " + name + " #" + std::to_string(entered) +
         (entered < seq_ ? ": it never reached this one)" : ")");
}

Failure ShmGroup::failure(Reason reason, int culprit) const {
  Failure f{reason, culprit};
  f.op = op_;
  f.call = seq_;
  return f;
}

void ShmGroup::publish_abort(const std::string& reason, Reason why, int culprit) {
  RankControl& mine = control(rank_);
  mine.abort_call.store(calls_);
  mine.abort_why.store(static_cast<uint32_t>(why));
  mine.abort_culprit.store(culprit);
  const size_t len = std::min(reason.size(), kReasonBytes - 1);
  std::memcpy(mine.reason, reason.data(), len);
  mine.reason[len] = '\0';
  uint32_t word = header().abort_word.load();
  // The first reporter of an epoch wins; later ones keep its reason.
  while (!abort_flag(word) && !header().abort_word.compare_exchange_weak(
                                  word, abort_word(abort_epoch(word), rank_, true))) {
  }
  bell_.ring_always();
  CHORUS_LOG(options_.verbose, "shm rank ", rank_, "/", size_, ": abort: ", reason);
}

void ShmGroup::throw_abort(uint32_t word) {
  const RankControl& reporter = control(abort_reporter(word));
  const std::string reason(reporter.reason, strnlen(reporter.reason, kReasonBytes));
  throw PeerError(
      Said{prefix() + op_ + " aborted: ", reason},
      failure(reason_from_wire(reporter.abort_why.load()), reporter.abort_culprit.load()));
}

void ShmGroup::check_usable() const {
  if (!broken_.empty()) throw PeerError(Said{prefix(), broken_}, failure(Reason::Died, broken_by_));
}

}  // namespace chorus::shm
