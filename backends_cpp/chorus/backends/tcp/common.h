// What the TCP backends (ring, mesh) share: the failure each forwards to its
// peers, so that every rank of a call raises naming the same culprit, and
// set-up deadlines.
#pragma once

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "chorus/transport/tcp/link.h"
#include "chorus/transport/tcp/socket.h"

namespace chorus {

// A failure to raise as PeerError here and to forward to the other ranks.
class LinkFailure : public PeerError {
 public:
  // fatal: the culprit is dead (its link reset or closed without an Abort,
  // or its listener refuses connections), so the group cannot recover.
  // reason: Unknown means Died when fatal, else Aborted. forward: the words
  // the other ranks' Abort frames carry; none: the cause (said.what).
  LinkFailure(int culprit, const Said& said, bool fatal = false, Reason reason = Reason::Unknown,
              std::optional<std::string> forward = std::nullopt)
      : PeerError(said, Failure{reason != Reason::Unknown ? reason
                                : fatal                   ? Reason::Died
                                                          : Reason::Aborted,
                                culprit}),
        forward_(forward ? std::move(*forward) : said.what),
        fatal_(fatal) {}
  int culprit() const { return failure().culprit; }
  Reason reason() const { return failure().reason; }
  const std::string& forward() const { return forward_; }
  bool fatal() const { return fatal_; }

 private:
  std::string forward_;
  bool fatal_;
};

// Runs f with `flag` set, and clears it however f ends (a TCP group's
// entering_: what it reads meanwhile arrived between calls).
template <typename F>
void with_flag_set(bool& flag, F&& f) {
  struct Clear {
    bool& flag;
    ~Clear() { flag = false; }
  } clear{flag};
  flag = true;
  f();
}

// "<text> (seen by rank 2)": a failure this rank saw with its own eyes, as
// forwarded to the others (whose view may differ).
inline std::string seen_by(const std::string& text, int rank) {
  return text + " (seen by rank " + std::to_string(rank) + ")";
}

// An Abort frame's aux0: culprit rank | fatal << 32 | p2p << 33 | abandoned << 34 | reason << 40
// (aux1 is the call index, the payload the reason's text).
struct AbortWord {
  int culprit = 0;
  bool fatal = false;
  bool p2p = false;  // mesh: a send cut short, not a collective
  Reason reason = Reason::Unknown;
  // mesh: a hierarchical call failed before this phase (MeshGroup::abandon):
  // its peers raise `reason`, not "late", though they never met the sender.
  bool abandoned = false;
};
inline uint64_t encode_abort(const AbortWord& w) {
  return static_cast<uint32_t>(w.culprit) | uint64_t{w.fatal} << 32 | uint64_t{w.p2p} << 33 |
         uint64_t{w.abandoned} << 34 | uint64_t{static_cast<uint8_t>(w.reason)} << 40;
}
inline AbortWord decode_abort(uint64_t aux0) {
  return AbortWord{static_cast<int>(static_cast<uint32_t>(aux0)), ((aux0 >> 32) & 1) != 0,
                   ((aux0 >> 33) & 1) != 0, reason_from_wire((aux0 >> 40) & 0xff),
                   ((aux0 >> 34) & 1) != 0};
}

// Where a rank stands on the collectives of a group: their count (the call
// index every frame of a call carries) and whether the host reported an
// interrupt since the previous one (interrupt.h).
class CallCounter {
 public:
  // A collective begins.
  void enter() {
    const uint64_t interrupts = interrupt_count();
    enter(interrupts != interrupts_at_last_call_);
  }
  // A collective begins as a phase of a hierarchical call, which decided at
  // its own entry whether this rank was interrupted on its way: an interrupt
  // during an earlier phase is not "on the way" to this one.
  void enter(bool interrupted_on_the_way) {
    ++index_;
    interrupted_on_the_way_ = interrupted_on_the_way;
    interrupts_at_last_call_ = interrupt_count();
  }
  uint64_t index() const { return index_; }

  // A peer it has not met in its current call yet says that call (`aborted`,
  // the same index) failed. Interrupted on its way, this rank never reached
  // that call (a Jupyter interrupt stops every rank wherever it is), so its
  // call is the peers' next one: true, and the index moves on. Otherwise it
  // is late for the failed call and must raise (false): pairing it with
  // their next call would mix two calls.
  //
  // An abort a hierarchical call's earlier phase sent (AbortWord::abandoned)
  // says the peers are ahead only when an interrupt caused it: a death or a
  // disagreement failed this very call everywhere (pass its reason).
  bool skip_aborted(std::optional<Reason> abandoned_for = std::nullopt) {
    if (!interrupted_on_the_way_) return false;
    if (abandoned_for && *abandoned_for != Reason::Interrupted &&
        *abandoned_for != Reason::Overlap) {
      return false;
    }
    ++index_;
    return true;
  }

  // The late entrant's error, forwarded text `reason` included.
  std::string late_text(const std::string& op, const std::string& reason) const {
    return op + " #" + std::to_string(index_) + " was aborted before this rank arrived (" + reason +
           "); the other ranks have moved on, so the next call works";
  }
  // The late entrant's error, culprit and cause known.
  LinkFailure late(int culprit, const std::string& op, const std::string& prefix,
                   const std::string& reason) const {
    return LinkFailure(culprit, Said{prefix, late_text(op, reason)}, false, Reason::Late, reason);
  }

 private:
  uint64_t index_ = 0;
  uint64_t interrupts_at_last_call_ = 0;
  bool interrupted_on_the_way_ = false;
};

// A collective's name on the wire (a Sync frame's aux1), so that a peer can
// say which call a rank that is gone was in: 1 + its index in kWireOps, 0
// for an unknown name.
inline constexpr std::array<const char*, 7> kWireOps = {
    "all_sum", "all_max", "all_min", "all_gather", "sum_scatter", "broadcast", "barrier"};
inline uint64_t wire_op(const std::string& op) {
  for (size_t i = 0; i < kWireOps.size(); ++i) {
    if (op == kWireOps[i]) return i + 1;
  }
  return 0;
}

// The latest call a peer's Sync frames named: its number and its op.
struct PeerLastCall {
  uint64_t index = 0;
  uint64_t op = 0;  // wire_op()
  void saw(uint64_t sync_index, uint64_t sync_op) {
    if (sync_index < index) return;
    index = sync_index;
    op = sync_op;
  }
};

// " (the last call it entered was barrier #40: it never reached this one)":
// where a peer that is gone was, from the last call its Sync frames named.
inline std::string last_call_text(const PeerLastCall& theirs, uint64_t ours) {
  if (theirs.index >= ours) return " (it was in this call)";
  if (theirs.index == 0) return " (it had entered no collective on this group)";
  const bool known = theirs.op >= 1 && theirs.op <= kWireOps.size();
  return std::string(" (the last call it entered was ") +
         (known ? std::string(kWireOps[theirs.op - 1]) + " " : "") + "#" +
         std::to_string(theirs.index) + ": it never reached this one)";
}

// This rank came to a call that already failed on the other ranks, and left
// before sending anything but its record: its links stay as they are (no
// abort to forward), and its next call meets theirs.
class LateEntrant : public PeerError {
 public:
  using PeerError::PeerError;
};

// A link that closed or failed under a call: "rank 2 (addr) died or left
// during all_sum: <why>", or, when it timed out (no answer to keepalive or
// to retransmissions: the host is down or cut off), "rank 2 (addr) is
// unreachable during all_sum: <why>"; and the reason to go with it.
struct LostLink {
  std::string text;
  Reason reason;
};
inline LostLink lost_link(const std::string& who, const std::string& op, const tcp::Link& link) {
  if (link.error() == ETIMEDOUT) {
    return {who + " is unreachable during " + op + ": " + link.failure_text() +
                " (no answer from its host: down or cut off)",
            Reason::Unreachable};
  }
  return {who + " died or left during " + op + ": " + link.failure_text(), Reason::Died};
}

// Why a neighbour could not be dialed again mid-call: no answer in time means
// unreachable; closed, reset or refused on us means its process is gone.
inline Reason tcp_reconnect_reason(const PeerError& e) {
  return dynamic_cast<const PeerTimeout*>(&e) != nullptr ? Reason::Unreachable : Reason::Died;
}

inline tcp::Clock::time_point deadline_after(double seconds) {
  return tcp::Clock::now() +
         std::chrono::duration_cast<tcp::Clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace chorus
