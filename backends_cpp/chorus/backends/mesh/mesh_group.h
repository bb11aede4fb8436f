// The mesh backend's group: one TCP link to every other rank (transport/tcp),
// driven by the direct algorithms of algorithms/mesh.h, with tagged
// point-to-point messages between any two ranks and the ring's failure
// protocol generalised to N-1 links. See README.md in this folder for the
// wire protocol and where an RDMA transport would plug in.
//
// Threads: the calling thread drives everything (poll over every link, with
// the GIL released); the Acceptor's thread only answers handshakes. Frames
// are read eagerly from every link whenever this rank is inside any call:
// collective frames queue per peer, point-to-point messages go to the
// Mailbox. That is what makes sends non-blocking in effect: a sender only
// waits for its bytes to leave, and every rank blocked in chorus drains.
//
// Call protocol (collectives):
//  1. Record round: every rank sends its record (a Sync frame: call index +
//     WireDesc + the whole input when it is small) to every peer and waits
//     for theirs; when the records are the whole call, by recursive doubling
//     (log2 N steps, one peer each: README.md). The record doubles as the
//     ring's Sync: until a peer's record arrived, its link dying means
//     "reconnecting", not death.
//  2. Every rank checks that all descriptors agree (UsageError everywhere if
//     not; links stay clean). Small inputs are then reduced locally in rank
//     order from the records: one round trip in all.
//  3. Large inputs: direct reduce-scatter + all-gather over all links.
//
// Failure: as the ring. The rank that sees a dead link, an interrupt or a
// protocol error sends an Abort frame (culprit, call index, reason) to every
// peer and closes its links; the others raise PeerError naming the culprit
// and do the same. Links are re-established at the start of the next call
// (lower rank dials higher, epoch + 1). A rank whose listener refuses
// connections is dead: PeerError naming it.
//
// Point to point: send(dst, tag) reconnects if needed and waits until its
// frames are written; an interrupted send aborts that one link (Abort frame
// flagged point-to-point) so the receiver drops the partial message. recv
// only reads the Mailbox, so an interrupted recv leaves nothing behind.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chorus/algorithms/mesh.h"
#include "chorus/backends/group_impl.h"
#include "chorus/backends/mesh/doubling.h"
#include "chorus/backends/mesh/mailbox.h"
#include "chorus/backends/tcp/common.h"
#include "chorus/backends/tcp/group_config.h"
#include "chorus/backends/tcp/link_setup.h"
#include "chorus/backends/tcp/poll_checks.h"
#include "chorus/common/interrupt.h"
#include "chorus/transport/tcp/handshake.h"
#include "chorus/transport/tcp/link.h"
#include "chorus/transport/tcp/listener.h"

namespace chorus::mesh {

using GroupConfig = TcpGroupConfig;

class MeshGroup final : public GroupImpl, private algo::MeshPeers {
 public:
  // Connects to every other rank (deadline config.timeout_s).
  MeshGroup(GroupConfig config, std::vector<tcp::Listener> listeners);
  ~MeshGroup() override;

  int rank() const override { return config_.rank; }
  int size() const override { return config_.size; }
  const char* backend() const override { return "mesh"; }
  uint64_t calls_entered() const override { return calls_.index(); }

  GroupPtr split(int color, int key) override;
  void all_reduce(const CallDesc& desc, const void* in, void* out) override;
  void all_gather(const CallDesc& desc, const void* in, void* out) override;
  void reduce_scatter(const CallDesc& desc, const void* in, void* out) override;
  void broadcast(const CallDesc& desc, void* buf) override;
  void barrier() override;
  void send(const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) override;
  void recv(void* buf, size_t nbytes, Dtype dtype, int src, int tag) override;
  bool supports_tags() const override { return true; }

  // A reduce_scatter whose block for rank b is the pieces blocks[b] of `in`
  // (bytes), reduced one after another into `out`; desc.count: the elements
  // of all blocks. A hierarchical group's host reduces, in place, the blocks
  // of other hosts' ranks, wherever they lie in its sum.
  void reduce_scatter_pieces(const CallDesc& desc, const std::vector<algo::Pieces>& blocks,
                             const void* in, void* out);

  const std::vector<std::string>& listen_addresses() const { return acceptor_->addresses(); }
  // The largest input a collective carries in its record round: it then
  // costs one round trip.
  size_t inline_bytes() const { return small_bytes_; }

  // A hierarchical group (backends/hier) runs this group as one phase of its
  // calls, exactly once per call of its own. The next collective takes
  // whether this rank was interrupted on its way from the hierarchical call's
  // entry: an interrupt during an earlier phase is not "on the way" to this one.
  void enter_next_as_phase(bool interrupted_on_the_way) {
    next_on_the_way_ = interrupted_on_the_way;
  }
  // Enters the next collective (`op`) and aborts it on every peer without
  // waiting for any: its peers raise PeerError with `culprit` (a rank of this
  // group, or a number the hierarchical group gave it), `reason` and `text`.
  // A hierarchical call that failed before this phase calls it, so that the
  // peers waiting here raise and the call counts stay in step (mesh_phase.cc).
  void abandon(const char* op, int culprit, Reason reason, const std::string& text);
  // Messages name rank r as rank shown[r] (TcpGroupConfig::shown_ranks), and
  // a disagreement its call as that of ranks speaks_for[r] (speaks_for).
  void show_ranks(std::vector<int> shown, std::vector<std::vector<int>> speaks_for = {}) {
    config_.shown_ranks = std::move(shown);
    config_.speaks_for = std::move(speaks_for);
  }

 private:
  // Everything about one other rank.
  struct Peer {
    tcp::Link link;
    uint64_t epoch = 0;           // of the installed link (the dialer's last dial)
    bool tolerant = false;        // a dead link means "reconnecting", not death
    bool need = false;            // the link must be re-established
    bool synced = false;          // its record of this call arrived
    bool sent_all = false;        // the link was reset after all our frames left
    PeerLastCall last_call;       // the latest call its records named
    uint64_t told_call = 0;       // tell_bystanders() last reached it in this call
    std::deque<tcp::Frame> coll;  // collective frames, in arrival order
    // Accepted connections (from lower ranks) by epoch, one slot per stream.
    StagedLinks staged;
  };
  struct PendingAbort {
    int culprit;
    uint64_t call;
    std::string text;
    bool fatal;
    Reason reason;
    bool abandoned;  // AbortWord::abandoned
  };
  enum class Kind { Collective, Send, Recv };

  // MeshPeers
  void isend(int peer, const void* data, size_t n) override;
  std::vector<uint8_t> recv_exact(int peer, size_t n) override;
  void wait_sends() override;

  std::string who(int rank) const;
  // Whether p's listener refuses a connection within `patience` (p is dead).
  bool refuses(int p, std::chrono::milliseconds patience) const;
  bool dialer_of(int p) const { return config_.rank < p; }

  // Set-up and reconnection (mesh_connect.cc).
  void connect_initial();
  void dial(int p, tcp::Clock::time_point deadline, bool first);
  void take_accepted();
  bool install(int p);
  void probe(int p);
  // p refused a connection: throw a fatal LinkFailure naming every rank gone.
  [[noreturn]] void report_gone(int p);
  bool recover(int p);
  // Drops p's link (it comes back at the next need); its queued frames too,
  // unless keep_frames (complete frames that arrived before the link went).
  void reset(int p, bool keep_frames = false);

  // Progress and failure (mesh_progress.cc).
  void progress(int timeout_ms = kInterruptPollMs);
  void route(int p, tcp::Frame frame);
  void check_links();
  // A peer whose host acknowledged nothing for peer_timeout_s: fatal.
  void check_reachable();
  // Aborts the call on every link. `abandoned` (abandon()): links that are
  // down and that the peer dials carry the abort on its next connection
  // (Acceptor::owe), as the peer may wait in this call already.
  void fail_links(int culprit, const std::string& text, bool fatal, Reason reason,
                  bool abandoned = false);
  // Names the call (op, number) and the culprit's address in a failure.
  void name_call(Failure& failure) const;
  void abort_link(int p, const std::string& text);
  // Runs one operation: its failures abort the links it dirtied (all of them
  // for a collective, the peer's for a send) so the next call starts clean.
  void run(const char* op, Kind kind, int peer, const std::function<void()>& body);
  // The record round (mesh_record_round.cc); returns every rank's record
  // (ours at rank()). `doubling`: the records are the whole call, so they
  // may travel by recursive doubling.
  std::vector<std::vector<uint8_t>> start_call(std::vector<uint8_t> record, bool doubling);
  enum class Taken { None, Record, Restart };
  // One look at p in a record round: brings p's link back if it must
  // (sending `resend`, if any, on the new link), probes a silent p, and
  // takes p's next Sync frame of this call into `out` (Record; one flagged
  // as a bundle only if `bundle`). Restart: p is ahead and this rank,
  // interrupted on the way, moved to the next call index.
  Taken take_sync(int p, bool probe_now, const std::vector<uint8_t>* resend, bool bundle,
                  tcp::Frame& out);
  void send_sync(int p, const std::vector<uint8_t>& payload, bool bundle);
  enum class Doubled { Done, Restart, AllToAll };
  // The doubling round (doubling.h). AllToAll: a peer runs the all-to-all
  // round (its call needs more than the records), so this rank must too.
  Doubled doubling_round(std::vector<std::vector<uint8_t>>& records);
  // A peer other than `partner` sent an all-to-all record of this call.
  bool all_to_all_seen(int partner);
  // No link was reset or replaced since link_changes_ was `before`, and no
  // peer dialed again.
  bool links_unchanged(uint64_t before);
  // Sends this call's record (flagged as a bundle) to each bystander of the
  // doubling round whose link came back or went down during it.
  void tell_bystanders();
  // Drops p's queued records of calls this rank has left (p was behind).
  void drop_stale_records(int p);
  void ensure_link(int p);

  // Record round + descriptor agreement (+ inline data for small inputs);
  // throws UsageError on disagreement. Returns every rank's record.
  // `whole_call`: nothing follows the records (small inputs, barrier).
  std::vector<std::vector<uint8_t>> agree(const CallDesc& desc, const void* data, size_t n,
                                          bool whole_call);
  bool small(size_t nbytes) const { return nbytes <= small_bytes_; }

  GroupConfig config_;
  ErrorContext ctx_;
  tcp::HandshakeId id_;
  size_t segment_bytes_;
  size_t small_bytes_;
  tcp::FrameLimits frame_limits_;  // what a peer's frames may be (see the constructor)
  std::unique_ptr<tcp::Acceptor> acceptor_;
  std::vector<Peer> peers_;  // indexed by rank; our own entry is unused
  Mailbox mailbox_;
  CallCounter calls_;  // collectives entered: the call index frames carry
  std::string op_ = "set-up";
  Kind kind_ = Kind::Collective;
  bool in_call_ = false;   // inside run()
  bool entering_ = false;  // start_call is reading what arrived between calls
  int op_peer_ = -1;       // the peer of the current send/recv
  int waiting_ = -1;       // the peer a frame is awaited from
  std::optional<PendingAbort> pending_abort_;
  std::optional<bool> next_on_the_way_;  // enter_next_as_phase()
  bool owes_ = false;  // abandon() left aborts with the acceptor (start_call forgets them)
  std::vector<uint8_t> record_;  // this call's record, resent after a reconnect
  std::vector<pollfd> fds_;
  std::vector<size_t> poll_starts_;  // first entry of each peer in fds_
  bool accepted_ready_ = true;       // the acceptor's wake fd fired since take_accepted()
  uint64_t split_count_ = 0;
  std::vector<DoublingStep> doubling_steps_;  // this rank's, fixed by rank and size
  std::vector<int> doubling_bystanders_;      // doubling_bystanders() of this rank
  uint64_t link_changes_ = 0;                 // links reset, dialed or installed
  tcp::PollChecks poll_checks_;
  std::chrono::microseconds spin_{0};   // tcp_spin()
  std::chrono::microseconds yield_{0};  // tcp_yield()
};

}  // namespace chorus::mesh
