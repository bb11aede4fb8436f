// The shm backend's group: every rank on one host, data through one shared
// segment, waits on futexes. See shm_group.cc for the protocol.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "chorus/algorithms/reduce.h"
#include "chorus/backends/call_wire.h"
#include "chorus/backends/group_impl.h"
#include "chorus/backends/shm/shm_layout.h"
#include "chorus/common/error.h"
#include "chorus/transport/shm/futex.h"
#include "chorus/transport/shm/peer_process.h"
#include "chorus/transport/shm/segment.h"

namespace chorus::shm {

class ShmGroup final : public GroupImpl {
 public:
  // Rendezvous on /chorus-<job_id>-<tag> (group rank 0 creates it). Throws
  // PeerTimeout when a rank does not attach within options.timeout_s,
  // UsageError on a token mismatch, BackendUnavailable when /dev/shm fails.
  ShmGroup(const InitOptions& options, std::string tag);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "shm"; }
  uint64_t calls_entered() const override { return seq_; }
  const std::string& segment_name() const { return name_; }
  // False once a peer died: every later call raises naming it.
  bool usable() const { return broken_.empty(); }
  // Whether this rank can read its peers' memory (single-copy all_gather, broadcast).
  bool single_copy() const { return cross_memory_; }

  GroupPtr split(int color, int key) override;
  void all_reduce(const CallDesc& desc, const void* in, void* out) override;
  void all_gather(const CallDesc& desc, const void* in, void* out) override;
  void reduce_scatter(const CallDesc& desc, const void* in, void* out) override;
  void broadcast(const CallDesc& desc, void* buf) override;
  void barrier() override;
  void send(const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) override;
  void recv(void* buf, size_t nbytes, Dtype dtype, int src, int tag) override;

  // A hierarchical group (backends/hier) runs each of its calls as one
  // collective of this group (shm_phased.cc): `local` (one of the *_phase
  // functions below) among this host's ranks, then `away` outside the
  // segment (the phase between hosts; the other ranks may already wait in the
  // next phase), then every rank copies each Block from its owner's `buffer`
  // into its own. A failure of `away` must be published with abort_call()
  // before it propagates, or the others wait for this rank for ever.
  // interrupted_on_the_way comes from the hierarchical call's entry.
  struct Block {
    int owner;      // the rank whose buffer holds it after `away`
    size_t offset;  // where it is in every rank's buffer
    size_t bytes;
  };
  void run_phased(const CallDesc& desc, bool interrupted_on_the_way,
                  const std::function<void()>& local, const std::function<void()>& away,
                  char* buffer, const std::vector<Block>& blocks);
  // `keep`: write only the parts of `out` in blocks this rank owns (the rest
  // comes in the last phase); null: all of it. A small call where this rank
  // owns no block of `keep` only publishes its input and arrives: it waits
  // for nobody until the last phase (a host's ranks other than the one
  // carrying an 8-byte sum between hosts are woken once per call, not twice).
  void all_reduce_phase(const CallDesc& desc, const void* in, void* out,
                        const std::vector<Block>* keep = nullptr);
  void all_gather_phase(const CallDesc& desc, const void* in, void* out);
  void broadcast_phase(const CallDesc& desc, void* buf);  // desc.root: a rank of this group
  // Only the descriptors' agreement (hosts that have no part in a phase).
  // `wait`: false for a rank that crosses nothing between hosts in this
  // call; it arrives without waiting and compares them in the last phase.
  void agree_phase(const CallDesc& desc, bool wait = true);
  // Aborts the current call for the other ranks: they raise PeerError with
  // `text`, `why` and `culprit` (any number the caller gives meaning to).
  void abort_call(const std::string& text, Reason why, int culprit) {
    publish_abort(text, why, culprit);
  }
  // Messages name rank r as rank shown[r] (a hierarchical group's ranks).
  void show_ranks(std::vector<int> shown) { shown_ = std::move(shown); }

 private:
  enum class WaitKind { Collective, Recovery, PointToPoint };

  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(segment_.data()); }
  RankControl& control(int r) const;
  char* slot(int r, uint64_t phase) const;
  WireDesc* slot_desc(int r, uint64_t phase) const;
  RingControl& ring(int src, int dst) const;
  char* ring_data(int src, int dst) const;

  // Set-up (shm_setup.cc).
  void rendezvous();
  void init_segment();
  void validate_segment();
  void wait_for_attach(double deadline_s);
  // Whether every peer's memory can be read with cross-memory attach.
  bool probe_cross_memory();

  // Collectives (shm_collectives.cc).
  template <typename Body>
  void run_collective(const CallDesc& desc, Body&& body);
  // on_the_way: whether this rank was interrupted on its way to the call, when
  // a hierarchical call decided it at its own entry (run_phased).
  void begin_collective(const CallDesc& desc, std::optional<bool> on_the_way = std::nullopt);
  void recover(uint32_t word);
  void write_desc(uint64_t phase, const CallDesc& desc);
  // Raises UsageError on every rank when the WireDescs of `phase` differ.
  // Called right after the phase's barrier (`then_arrive`), it first arrives
  // at the next barrier without waiting: a rank that published without
  // waiting (arrive_unchecked) compares them there, and so raises too.
  void check_descs(uint64_t phase, bool then_arrive = true);
  // This rank's part of a barrier without the wait: bumps its sequence word
  // and wakes the others.
  void arrive();
  // arrive() at the end of `phase` for a rank that needs nothing the others
  // publish in it (a hierarchical call's rank that keeps none of a small
  // sum, or only agrees and crosses nothing): the next barrier it waits at
  // (gather_blocks) compares the phase's descriptors.
  void arrive_unchecked(uint64_t phase);
  // `peers_away`: the ranks it waits for are in a phase between hosts (a
  // hierarchical call's): the wait is long, so it never yields (below).
  void arrive_and_wait(bool peers_away = false);
  void reduce_slots(ReduceKernel kernel, void* dst, uint64_t phase, size_t offset,
                    size_t count) const;
  // First phase of a single-copy call: publish `address` and the descriptor;
  // returns every rank's address, or nothing when some rank cannot read peers.
  std::vector<uint64_t> publish_address(const CallDesc& desc, const void* address);
  // all_gather / broadcast through the segment, chunk by chunk (two copies per byte).
  void all_gather_chunked(const CallDesc& desc, const char* src, char* dst);
  void broadcast_chunked(const CallDesc& desc, char* data);
  // Every owner's block of `buffer` to every rank through the slots, chunk
  // by chunk: run_phased's last phase, and all_gather_chunked. This rank's
  // block comes from `own` (then it is copied into `buffer` too) or is in
  // place. `desc`: the call's, written and compared in the first phase.
  // `after_away`: the owners come from the phase between hosts.
  void gather_blocks(char* buffer, const std::vector<Block>& blocks, const char* own = nullptr,
                     const CallDesc* desc = nullptr, bool after_away = false);
  // Reads peer `r`'s n bytes at `remote` into `local`, or aborts the call.
  void read_from_peer(int r, uint64_t remote, void* local, size_t n);

  // Waiting and failure (shm_wait.cc; wait() is in shm_group_inl.h).
  // `no_yield`: after the spin, sleep at once (see arrive_and_wait()).
  template <typename Ready, typename Blockers>
  void wait(Ready&& ready, Blockers&& blockers, WaitKind kind, bool no_yield = false);
  void check_peer_alive(int peer, WaitKind kind);
  // Aborts (a collective), marks the group unusable and raises PeerError.
  [[noreturn]] void peer_died(int peer, WaitKind kind);
  // Aborts the current collective for every rank: `reason` names what
  // happened, `why` and `culprit` say it as data (PeerError's Failure).
  void publish_abort(const std::string& reason, Reason why, int culprit);
  // This call's failure (op, number) with `reason` and `culprit`.
  Failure failure(Reason reason, int culprit) const;
  std::string last_call_of(int peer) const;
  [[noreturn]] void throw_abort(uint32_t word);
  void check_usable() const;

  // Point to point (shm_p2p.cc).
  void stream_write(int dst, const void* data, size_t nbytes, size_t& done);
  void stream_read(int src, void* data, size_t nbytes, size_t& done);
  size_t available(int src);
  bool drain_incoming();
  void check_ring(int src) const;

  std::string prefix() const { return ctx_.prefix(); }
  // "rank 5": how messages name rank r (show_ranks()).
  std::string rank_name(int r) const {
    return "rank " + std::to_string(shown_.empty() ? r : shown_[static_cast<size_t>(r)]);
  }

  InitOptions options_;
  ErrorContext ctx_;
  int rank_ = 0;
  int size_ = 1;
  std::string tag_;
  std::string name_;
  Layout layout_;
  Segment segment_;
  Doorbell bell_;
  std::vector<PeerProcess> peers_;
  // This rank can read every peer's memory (cross_memory.h); a collective
  // takes the single-copy path only when every rank says so.
  bool cross_memory_ = false;
  size_t cross_memory_min_bytes_ = 0;  // bytes per rank from which collectives use it
  uint64_t arrivals_ = 0;              // barriers passed in this abort epoch = current phase
  // The phase whose descriptors this rank published without waiting to
  // compare them (arrive_unchecked).
  std::optional<uint64_t> descs_unchecked_;
  uint32_t epoch_ = 0;  // abort epoch this rank runs in
  uint32_t calls_ = 0;  // collectives entered in this epoch (the current one included)
  uint64_t seq_ = 0;    // collectives entered on this group, for messages
  uint64_t interrupts_at_last_call_ = 0;  // interrupt_count() when the last call began
  uint64_t splits_ = 0;
  std::string op_ = "set-up";  // current operation, for messages
  // How long a wait spins, then yields the core, before it sleeps (wait()).
  std::chrono::microseconds spin_budget_{0};
  std::chrono::microseconds yield_budget_{0};
  std::chrono::steady_clock::time_point next_interrupt_poll_{};  // see wait()
  std::string broken_;  // set once a peer died: the group is unusable
  int broken_by_ = -1;  // ... and which peer
  // Point to point: bytes drained from incoming rings while a send was
  // blocked (so symmetric exchanges of any size progress), per source rank.
  std::vector<std::vector<char>> pending_;
  std::vector<size_t> pending_off_;
  std::vector<int> shown_;      // show_ranks()
  std::vector<uint64_t> skip_;  // unread bytes of an incoming message abandoned by an interrupt
};

}  // namespace chorus::shm
