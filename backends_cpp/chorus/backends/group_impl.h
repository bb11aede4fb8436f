// The interface every backend implements, and what it is built from.
//
// Backends only move bytes: ops.cc has already picked the default group,
// handled size 1, allocated outputs and checked local arguments. What a
// backend must still check is that all ranks agree on the call (CallDesc):
// a disagreement raises UsageError on every rank and leaves the group usable.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chorus/common/call_guard.h"
#include "chorus/common/flight_recorder.h"
#include "chorus/dtype.h"

namespace chorus {

enum class Collective : uint8_t { AllReduce, AllGather, ReduceScatter, Broadcast, Barrier };

const char* collective_name(Collective kind, ReduceOp op);

// Dimensions of the input a descriptor carries, for messages only (equality
// goes by shape_hash, which covers every dimension).
constexpr int kShownDims = 4;
constexpr uint8_t kUnknownDims = 0xff;  // the caller gave no shape (C++ callers)

// What one rank asked for. All ranks of a group must pass equal descriptors to
// the same collective; backends exchange and compare them.
struct CallDesc {
  Collective kind = Collective::Barrier;
  ReduceOp op = ReduceOp::Sum;
  Dtype dtype = Dtype::UInt8;
  uint64_t count = 0;           // elements of the input on this rank
  uint64_t shape_hash = 0;      // hash of the input's shape (same count, other shape = mismatch)
  int32_t root = 0;             // broadcast only
  uint8_t ndim = kUnknownDims;  // the input's dimensions, or kUnknownDims
  std::array<int64_t, kShownDims> dims{};  // its first kShownDims sizes

  size_t nbytes() const { return static_cast<size_t>(count) * dtype_size(dtype); }
  bool operator==(const CallDesc& other) const;
  bool operator!=(const CallDesc& other) const { return !(*this == other); }
  // "all_sum of (2, 5) float64" ("all_sum of 1024 x float32" without a
  // shape), for error messages.
  std::string describe() const;
  // "(2, 5)", "(3,)", "()", "(2, 3, 4, 5, ...)"; "" without a shape.
  std::string shape_text() const;
};

// "ranks 0,2,3 have all_sum of 10 x float64 (...), rank 1 has ...": rank
// i's call is descs[i]. Every rank holds every descriptor, so every rank
// builds the same text. `describe` names a call (CallDesc::describe by
// default; the mpi backend also names its split).
// shown[k], when given, is how the text numbers rank k (a hierarchical
// group's sub-groups show its ranks); speaks_for[k], when given, the ranks
// whose call rank k's is (a hierarchical group's cross member: every rank of
// its host, which agreed on the call before the hosts compared theirs).
std::string disagreement(const std::vector<CallDesc>& descs,
                         std::string (*describe)(const CallDesc&) = nullptr,
                         const std::vector<int>& shown = {},
                         const std::vector<std::vector<int>>& speaks_for = {});

// Knobs for measurements and tests (CHORUS_SHM_*, CHORUS_TCP_SPIN_US), read
// and checked by chorus/env.py. Unset, each backend keeps its own default.
struct Tuning {
  // How long a shm wait spins, then yields, before it sleeps on the futex
  // (CHORUS_SHM_SPIN_US / CHORUS_SHM_YIELD_US): for measurements, and for
  // tests that need every wait to reach the futex and its interrupt check.
  // Unset: see spin_budget() and the shm backend's yield_budget().
  std::optional<std::chrono::microseconds> shm_spin;
  std::optional<std::chrono::microseconds> shm_yield;
  // Whether shm all_gather and broadcast may read peers' buffers directly
  // (CHORUS_SHM_CMA=0 turns reads off), and from how many bytes per rank
  // (CHORUS_SHM_CMA_BYTES; unset: 64 KiB).
  bool shm_cma = true;
  std::optional<size_t> shm_cma_bytes;
  // How long the TCP backends look for traffic, then yield, before they
  // sleep in poll() (CHORUS_TCP_SPIN_US / CHORUS_TCP_YIELD_US). Unset: see
  // spin_budget() and yield_budget().
  std::optional<std::chrono::microseconds> tcp_spin;
  std::optional<std::chrono::microseconds> tcp_yield;
};

// Everything a backend needs to build the world group; filled from the
// environment by the Python layer (chorus/env.py).
struct InitOptions {
  int rank = 0;
  int size = 1;
  // One entry per rank, each a list of "ip:port"; several addresses for a
  // rank mean several sockets per neighbour.
  std::vector<std::vector<std::string>> hosts;
  std::string token;        // shared secret proven in every handshake
  std::string job_id;       // unique per job: names shm segments
  std::string hostname;     // this machine, for error messages
  double timeout_s = 60.0;  // set-up deadline
  // A peer whose host acknowledges nothing for this long is unreachable (TCP
  // backends); a slow or stopped peer process still acknowledges.
  double peer_timeout_s = 15.0;
  bool verbose = false;
  size_t segment_bytes = 0;  // pipeline segment size; 0 = backend default (test knob)
  // Listening sockets the launcher already bound for this rank, one per
  // address in hosts[rank] (CHORUS_LISTEN_FDS): using them instead of binding
  // again makes port choice race-free. Empty = bind hosts[rank] ourselves.
  std::vector<int> listen_fds;
  // "ip:port" of rank 0 (CHORUS_COORDINATOR). With no hosts, backends that
  // support it exchange listen addresses through rank 0 there (tcp/rendezvous.h).
  std::string coordinator;
  Tuning tuning;  // sub-groups inherit it
  // The job's ranks on this machine, whatever host each is listed as
  // (CHORUS_MACHINE_RANKS, from the launcher: emulated hosts and containers
  // share one machine's cores); 0: unknown, count the hostfile's. Waits spin
  // only when these ranks have a core each.
  int machine_ranks = 0;
};

// Prefix every error message of a group with "[chorus ring] rank 2/4 (hostb): ".
struct ErrorContext {
  std::string backend;
  int rank = 0;
  int size = 1;
  std::string hostname;
  std::string prefix() const;
};

class GroupImpl {
 public:
  virtual ~GroupImpl() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend() const = 0;

  // As MPI_Comm_split: ranks with the same color form a group, ordered by
  // (key, parent rank). Every rank of this group must call it.
  virtual std::shared_ptr<GroupImpl> split(int color, int key) = 0;

  // out[count] = op over ranks of in[count]. in may equal out.
  virtual void all_reduce(const CallDesc& desc, const void* in, void* out) = 0;
  // out[size * nbytes] = concatenation of every rank's in[nbytes], rank order.
  virtual void all_gather(const CallDesc& desc, const void* in, void* out) = 0;
  // in[count] reduced over ranks; this rank keeps block `rank` of size
  // count / size in out. ops.cc guarantees count % size == 0.
  virtual void reduce_scatter(const CallDesc& desc, const void* in, void* out) = 0;
  // buf[nbytes] from desc.root to everyone.
  virtual void broadcast(const CallDesc& desc, void* buf) = 0;
  virtual void barrier() = 0;

  // Point to point. The receiver checks that nbytes and dtype match the
  // sender's and raises UsageError if not (the message is drained). Messages
  // between two ranks with the same tag arrive in order; ops.cc only passes
  // tag != 0 to backends whose supports_tags() is true.
  virtual void send(const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) = 0;
  virtual void recv(void* buf, size_t nbytes, Dtype dtype, int src, int tag) = 0;
  virtual bool supports_tags() const { return false; }

  // One call at a time from any thread (call_guard.h); ops.cc holds it
  // around every call.
  CallGuard& call_guard() { return call_guard_; }

  // The group's last calls (flight_recorder.h): ops.cc begins and ends each
  // record, backends say when a call's descriptors agreed.
  FlightRecorder& recorder() { return recorder_; }
  // Collectives this rank entered on the group: the number its current or
  // last collective has in messages and PeerError.call.
  virtual uint64_t calls_entered() const { return 0; }
  // Point-to-point calls made on the group (their numbers in the recorder).
  uint64_t next_p2p_number() { return ++p2p_calls_; }

 private:
  CallGuard call_guard_;
  FlightRecorder recorder_;
  uint64_t p2p_calls_ = 0;
};

using GroupPtr = std::shared_ptr<GroupImpl>;

// ": they have not called chorus.init() ...": what a set-up timeout naming
// `ranks` missing ranks means to a user who never asked anything to attach.
std::string never_joined_hint(size_t ranks);

// A size-1 group: every collective copies in to out, point to point raises.
GroupPtr make_single_group(const std::string& backend);

// Membership of the sub-group this rank lands in after split(color, key).
struct SplitPlan {
  int new_rank = 0;
  std::vector<int> members;  // parent ranks, in new-rank order
  int color = 0;
  uint64_t split_index = 0;  // how many splits the parent did before: names resources
};

// Computes the plan with one all_gather on the parent (every rank must call).
SplitPlan plan_split(GroupImpl& parent, int color, int key, uint64_t split_index);

}  // namespace chorus
