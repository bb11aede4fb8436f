// The ring backend's group: two neighbour links (TCP transport) driven by the
// ring algorithms, plus the failure protocol that keeps a group usable after
// an error or a Ctrl-C.
//
// Protocol per collective call (all frames of transport/tcp/link.h):
//  1. Sync: each rank sends a Sync frame (aux0 = call index) to both
//     neighbours and waits for theirs. Until a link's Sync arrived, its death
//     is not an error: the neighbour may be re-establishing it (see below).
//  2. Descriptor round: every rank's WireDesc (+ its data, when the message is
//     small) goes once around the ring; every rank checks that all agree and
//     raises the same UsageError if not. Links are clean afterwards.
//  3. Large messages: the pipelined two-lane ring algorithm, receiving into a
//     window of a few segments per lane; while a collective runs, a
//     neighbour's segments beyond the window stay in the socket (the links'
//     FrameLimits::hold_over) so a call's memory does not grow with it.
//
// Failure: the rank that sees a dead link, an interrupt or a protocol error
// sends an Abort frame (culprit rank, call index, reason) to its live
// neighbours and closes both links; receivers raise PeerError and forward it,
// so every rank raises within a round trip of the ring. An Abort from an
// older call is stale (that rank failed after we had finished) and ignored.
//
// Call identity: a rank that enters a call a neighbour already aborted (its
// Abort, or its Sync of a later call index, says so) raises at once (reason
// late) unless it was interrupted since its previous call; then its call is
// the neighbours' next one (CallCounter in ../tcp/common.h). A Sync of a call
// this rank has left is dropped: the neighbour sends its next one.
//
// Unreachable: a neighbour whose host acknowledges nothing in flight for
// peer_timeout_s, or answers no keepalive, fails the call (fatal); a stopped
// process still acknowledges and is never declared dead.
//
// Reconnect: closed links are re-established at the start of the next call:
// a rank connects to its right neighbour again with epoch + 1 and waits for
// its left neighbour's new connection (stale epochs are refused by the
// acceptor). A rank whose links looked clean sees the old link die before the
// neighbour's Sync and joins the reconnect transparently. A neighbour whose
// listener refuses connections is dead: PeerError naming it.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chorus/algorithms/ring.h"
#include "chorus/backends/group_impl.h"
#include "chorus/backends/tcp/common.h"
#include "chorus/backends/tcp/group_config.h"
#include "chorus/backends/tcp/link_setup.h"
#include "chorus/backends/tcp/poll_checks.h"
#include "chorus/common/interrupt.h"
#include "chorus/transport/tcp/handshake.h"
#include "chorus/transport/tcp/link.h"
#include "chorus/transport/tcp/listener.h"

namespace chorus::ring {

using GroupConfig = TcpGroupConfig;

class RingGroup final : public GroupImpl, private algo::RingPair {
 public:
  // Connects to both neighbours (deadline config.timeout_s).
  RingGroup(GroupConfig config, std::vector<tcp::Listener> listeners);
  ~RingGroup() override;

  int rank() const override { return config_.rank; }
  int size() const override { return config_.size; }
  const char* backend() const override { return "ring"; }
  uint64_t calls_entered() const override { return calls_.index(); }

  GroupPtr split(int color, int key) override;
  void all_reduce(const CallDesc& desc, const void* in, void* out) override;
  void all_gather(const CallDesc& desc, const void* in, void* out) override;
  void reduce_scatter(const CallDesc& desc, const void* in, void* out) override;
  void broadcast(const CallDesc& desc, void* buf) override;
  void barrier() override;
  void send(const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) override;
  void recv(void* buf, size_t nbytes, Dtype dtype, int src, int tag) override;

  // The addresses this group listens on (for split's exchange and tests).
  const std::vector<std::string>& listen_addresses() const { return acceptor_->addresses(); }

 private:
  using Side = algo::Side;
  struct PendingAbort {
    int culprit;
    uint64_t call;
    std::string text;
    bool fatal;
    Reason reason;
  };

  // RingPair
  uint64_t isend(Side to, const void* data, size_t n) override;
  void wait_send(Side to, uint64_t ticket) override;
  void isend_owned(Side to, std::vector<uint8_t> bytes) override;
  uint64_t irecv(Side from, void* data, size_t n) override;
  void wait_recv(Side from, uint64_t ticket) override;
  std::vector<uint8_t> recv_bytes(Side from) override;
  void wait_sends() override;

  int left() const { return (config_.rank + config_.size - 1) % config_.size; }
  int right() const { return (config_.rank + 1) % config_.size; }
  int peer(Side side) const { return side == Side::Left ? left() : right(); }
  tcp::Link& link(Side side) { return links_[static_cast<int>(side)]; }
  std::string who(int rank) const;

  void connect_initial();
  void connect_right(tcp::Clock::time_point deadline, bool retry);
  bool install_left();
  void probe_left();
  bool recover(Side side);
  void progress(int timeout_ms = kInterruptPollMs);
  void check_links();
  // A neighbour whose host acknowledged nothing for peer_timeout_s: fatal.
  void check_reachable();
  void start_call();
  void fail_links(int culprit, const std::string& text, bool fatal = false,
                  Reason reason = Reason::Aborted);
  // Names the call (op, number) and the culprit's address in a failure.
  void name_call(Failure& failure, bool collective) const;
  template <typename Body>
  void run(const char* op, bool collective, Body&& body);
  // Backpressure for a collective's segments (tcp::FrameLimits::hold_over).
  class HoldSegments {
   public:
    HoldSegments(RingGroup& group, bool on);
    ~HoldSegments();
    HoldSegments(const HoldSegments&) = delete;
    HoldSegments& operator=(const HoldSegments&) = delete;

   private:
    RingGroup* group_;
  };
  void hold_segments(size_t over);

  // Descriptor round (+ inline data for small messages); throws UsageError on
  // disagreement. Returns every rank's record.
  std::vector<std::vector<uint8_t>> agree(const CallDesc& desc, const void* data, size_t n);
  bool small(size_t nbytes) const { return nbytes <= small_bytes_; }

  GroupConfig config_;
  ErrorContext ctx_;
  tcp::HandshakeId id_;
  size_t segment_bytes_;
  size_t small_bytes_;
  tcp::FrameLimits frame_limits_;  // what a peer's frames may be (frame_limits())
  std::unique_ptr<tcp::Acceptor> acceptor_;
  tcp::Link links_[2];
  uint64_t right_epoch_ = 0;
  uint64_t left_epoch_ = 0;
  StagedLinks staged_;  // left links by epoch
  CallCounter calls_;   // collectives entered: the call index frames carry
  std::string op_ = "set-up";
  bool tolerant_[2] = {false, false};  // a dead link here means "reconnecting", not death
  bool need_[2] = {false, false};      // this side must be re-established
  uint64_t rx_start_[2] = {0, 0};
  std::optional<PendingAbort> pending_abort_;
  // A neighbour's Sync for a later call than ours, on the link of `epoch`.
  struct AheadSync {
    uint64_t index = 0;
    uint64_t epoch = 0;
    bool set = false;
  };
  AheadSync ahead_[2];
  PeerLastCall last_sync_[2];  // the latest call each neighbour's Sync named
  bool collective_ = false;    // the current call is a collective (messages)
  // " (the last call it entered was #40: ...)" for a collective, else "".
  std::string where_was(Side side) const;
  uint64_t link_epoch(int s) const { return s == 0 ? left_epoch_ : right_epoch_; }
  bool entering_ = false;  // start_call is reading what arrived between calls
  std::vector<pollfd> fds_;
  std::vector<uint8_t> scratch_;  // the ring algorithms' receive window, kept across calls
  // ... kept up to this size (trim_buffers: a larger segment size's windows
  // go with the call), so what a group keeps between calls stays bounded.
  static constexpr size_t kKeptBufferBytes = size_t{64} << 20;
  void trim_buffers();
  uint64_t split_count_ = 0;
  tcp::PollChecks poll_checks_;
  // How long progress() looks for traffic before poll() sleeps (cpu.h).
  std::chrono::microseconds spin_{0};   // tcp_spin()
  std::chrono::microseconds yield_{0};  // tcp_yield()
  bool acceptor_woke_ = false;          // its wake fd fired since install_left() drained it
};

}  // namespace chorus::ring
