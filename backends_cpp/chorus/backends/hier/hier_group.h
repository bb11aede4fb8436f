// A group over several hosts that moves bytes through shared memory inside a
// host and over TCP between hosts, as Open MPI's and NCCL's hierarchical
// collectives do.
//
// Built from three kinds of groups:
//   world   the mesh over every rank (point to point, split, host discovery);
//   local   the shm group of this host's ranks (none when alone on the host);
//   cross   cross group j joins the j-th rank of every host (a split of
//           world), for j below the fewest ranks a host has.
//
// Every call is one collective of `local` (ShmGroup::run_phased) holding at
// most one collective of `cross`, whatever the size and kind, so every rank
// of a host enters the same sub-calls in the same order:
//   1. local phase: all_reduce / all_gather / broadcast among the host's ranks
//      (the descriptors are compared here, inside the host);
//   2. cross phase: rank j of each host reduces, gathers or broadcasts block j
//      of the host's data with rank j of every other host (the descriptors
//      are compared again there, across hosts), so every rank of a host
//      carries its share of the traffic between hosts (a reduce_scatter
//      reduce-scatters there: only each host's ranks' blocks cross);
//   3. every rank of the host copies the blocks from their owners (shm).
// A call whose data between hosts fits in one mesh round trip crosses in
// cross group 0 alone (cross_parts()); the other groups sit it out.
//
// Failures cross the phases as the flat backends' do inside one: a rank that
// fails a phase aborts the calls it has not reached yet (MeshGroup::abandon
// for the cross call, ShmGroup::abort_call for the local one, which the
// others wait in), so every rank of every host raises, naming the culprit
// by its rank in this group. Sub-groups number ranks their own way; a
// culprit outside a sub-group travels in it as -2 - rank (foreign()).
// Whether a rank was interrupted on its way to a call is decided at this
// group's entry for the shm call and since the cross group's own last call
// for the cross call, and handed to each: the flat backends' rule that pairs
// such a rank with its peers' next call then moves both sub-groups on
// together. A cross group that sat out a failed call abandons it too.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "chorus/backends/group_impl.h"
#include "chorus/backends/hier/hosts.h"
#include "chorus/backends/mesh/mesh_group.h"
#include "chorus/backends/shm/shm_group.h"

namespace chorus::hier {

class HierGroup final : public GroupImpl {
 public:
  // Every rank of `world` calls it. keys[r]: rank r's host (equal on one
  // host); names[r]: how messages name its host. `local`: this host's shm
  // group, null when this rank is alone on its host. Splits `world` into the
  // cross groups.
  HierGroup(const InitOptions& options, std::shared_ptr<mesh::MeshGroup> world,
            std::shared_ptr<shm::ShmGroup> local, std::vector<std::string> keys,
            std::vector<std::string> names);

  int rank() const override { return options_.rank; }
  int size() const override { return options_.size; }
  const char* backend() const override { return "hier"; }
  uint64_t calls_entered() const override { return calls_; }

  GroupPtr split(int color, int key) override;
  void all_reduce(const CallDesc& desc, const void* in, void* out) override;
  void all_gather(const CallDesc& desc, const void* in, void* out) override;
  void reduce_scatter(const CallDesc& desc, const void* in, void* out) override;
  void broadcast(const CallDesc& desc, void* buf) override;
  void barrier() override;
  void send(const void* buf, size_t nbytes, Dtype dtype, int dst, int tag) override;
  void recv(void* buf, size_t nbytes, Dtype dtype, int src, int tag) override;
  bool supports_tags() const override { return true; }

  const HostLayout& layout() const { return layout_; }

 private:
  enum class Phase { Local, Cross, Gather };
  // A sub-group's failure, in this group's terms.
  struct Caught {
    Failure failure;     // culprit: a rank of this group, or -1
    std::string detail;  // the sub-group's message
    // "rank 3 (h1) died or left during all_sum (...)": what this rank raises
    // after its prefix and the call, and what other sub-groups are told.
    std::string cause;
  };

  // One call: `local` (a ShmGroup::*_phase, or this rank's own part when it
  // is alone on its host), `cross` (this rank's cross-group call, made by
  // cross groups below `parts` only), then the blocks of `buffer` gathered
  // from their owners.
  void run(const CallDesc& desc, int parts, const std::function<void()>& local,
           const std::function<void()>& cross, char* buffer,
           const std::vector<shm::ShmGroup::Block>& blocks);
  // How many cross groups carry a call whose data between hosts is
  // `cross_bytes` per host: all of them, or only group 0 when that fits in
  // one round trip of the mesh (MeshGroup::inline_bytes): a small call then
  // costs one exchange between hosts, not one per cross group.
  int cross_parts(size_t cross_bytes) const;
  // The exception being handled, thrown in `phase`, as data.
  Caught caught(Phase phase) const;
  // Throws the exception being handled again in this group's terms.
  [[noreturn]] void rethrow(const Caught& c) const;
  // A cross-phase descriptor: block `count` of `desc`'s data, `dtype` units;
  // its hash covers the whole call, so hosts that disagree on it raise.
  static CallDesc phase_desc(const CallDesc& desc, Collective kind, Dtype dtype, uint64_t count);
  // The blocks cross group j < m owns: [begin(j), begin(j + 1)) of
  // `total` units of `unit` bytes, `copies` of each (one per host).
  std::vector<shm::ShmGroup::Block> blocks(size_t total, size_t unit, size_t copies, int m) const;
  std::string who(int rank) const;
  // `buffer`, grown to at least `bytes`: kept from call to call, as the
  // ring's window is, because faulting a large buffer's pages in costs as
  // much as moving its bytes between hosts.
  static char* kept(std::vector<char>& buffer, size_t bytes);

  InitOptions options_;
  ErrorContext ctx_;
  std::shared_ptr<mesh::MeshGroup> world_;
  std::shared_ptr<shm::ShmGroup> local_;    // null: alone on this host
  std::shared_ptr<mesh::MeshGroup> cross_;  // null: no cross group (or one host)
  std::vector<std::string> keys_;
  std::vector<std::string> names_;
  HostLayout layout_;
  int host_ = 0;         // this rank's host
  int local_index_ = 0;  // its index on the host
  std::string op_ = "set-up";
  uint64_t calls_ = 0;
  uint64_t interrupts_at_last_call_ = 0;   // interrupt_count() when the last call began
  uint64_t interrupts_at_last_cross_ = 0;  // ... when the cross group's last call began
  uint64_t splits_ = 0;
  // Working memory of the calls (kept()): a host's sum or part, and the
  // blocks gathered from the cross groups.
  std::vector<char> sum_;
  std::vector<char> blocks_;
  // This host's shm group broke after this rank's cross call: the next
  // cross call is already abandoned (run()).
  bool next_cross_abandoned_ = false;
};

}  // namespace chorus::hier
