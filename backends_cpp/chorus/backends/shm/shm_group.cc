// Shared-memory collectives.
//
// Synchronisation. Each rank owns a barrier sequence word (RankControl::seq);
// arrive_and_wait() bumps it, rings the segment's doorbell and waits until
// every rank's word reached the same value. Waiting spins for up to 50
// microseconds when every rank has a core of its own (or, when ranks
// outnumber cores, yields the core for up to 100 us instead) and then
// sleeps on the doorbell futex in slices of at most kInterruptPollMs; after
// each slice it runs check_interrupt(), looks at the abort word and checks
// that the ranks it waits on are still alive.
//
// Phases. Barriers cut every rank's timeline into the same numbered phases
// (phase = barriers passed in this epoch, arrivals_). In phase p a rank writes
// only into its own slot of buffer p % 3; what it wrote is read by others in
// phases p + 1 and p + 2 and overwritten in phase p + 3, after barrier p + 2
// proved every reader done. With three buffers a collective needs one barrier
// per chunk (write chunk j, reduce chunk j - 1, copy out chunk j - 2 in the
// same phase), and no barrier at its end: its last phase is the first phase
// of the next call, which writes another buffer.
//
// Agreement. The first phase of every collective writes the caller's
// WireDesc into the slot header; right after the first barrier every rank
// compares all of them, so a mismatch raises UsageError on every rank and the
// group stays usable. A rank that raises there first arrives at the next
// barrier, where the ranks that published without waiting (in a
// hierarchical call, those that keep none of a small all_reduce, or only
// agree and cross nothing) compare them: every rank leaves at the same phase.
//
// Abort and recovery. A rank that is interrupted or sees a peer die inside a
// collective publishes an abort (abort word: epoch, reporter, flag; the
// reason text in its RankControl) and wakes everyone; ranks waiting in the
// collective raise PeerError with that reason. The next collective on each
// rank finds the flag and runs a recovery barrier: reset its own sequence
// word and phase, acknowledge epoch + 1, wait until every rank acknowledged,
// then move the abort word to the next epoch. Since nobody writes a slot
// before every rank acknowledged, i.e. left the failed call, the reset is safe.
// Calls are numbered per epoch and an abort records the reporter's call
// number, so that a rank can tell where an abort belongs: to the call it is
// in (raise), to an earlier call it finished before the abort was published
// (recover, then run or restart its current call; nothing of that call can
// have passed a barrier, so restarting is safe), or to a later call while its
// own barrier already completed (ignore it here; the next call raises).
// A rank that enters a collective after an abort was published either was
// not in the failed call (it finished it, or was interrupted before reaching
// it: interrupt_count() moved since its previous call) and recovers and runs
// its call normally, so "every rank left the failed call, then calls again"
// always works; or it is late for the very call that failed (its own call
// number in the epoch is the aborted one and it was not interrupted): it
// recovers and raises, and its next call meets its peers' next call.
//
// Single copy. A large all_gather or broadcast skips the segment: in its
// first phase each rank publishes its buffer's address (and whether it can
// read every peer), then every rank reads what it needs straight into its
// result with cross-memory attach (one kernel copy per byte instead of a copy
// into the segment and one out of it, and two barriers instead of one per
// chunk). A second barrier keeps every buffer untouched until the last
// reader is done. If any rank cannot read its peers, all of them take the
// chunked path, one phase later.

#include "chorus/backends/shm/shm_group.h"

#include <cctype>
#include <chrono>
#include <optional>
#include <sstream>

#include "chorus/backends/shm/shm_group_inl.h"
#include "chorus/common/cpu.h"

namespace chorus::shm {
namespace {

// Long enough to cover the skew between ranks copying a chunk or a peer's
// block (a futex wake-up costs tens of microseconds in a VM: 1 MiB all_sum at
// N=2 ~145 -> ~125 us against 5 us), short enough to cost nothing when a
// peer is really late. Only when every rank has a core: see spin_budget().
constexpr auto kSpin = std::chrono::microseconds(50);

// /chorus-<job_id>-<tag>, with characters a shm name cannot hold replaced.
std::string make_segment_name(const std::string& job_id, const std::string& tag) {
  std::string job;
  for (char c : job_id)
    job +=
        (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.') ? c : '_';
  if (job.empty()) job = "nojob";
  if (job.size() > 160) {
    std::ostringstream hex;
    hex << std::hex << fnv1a(job_id);
    job = job.substr(0, 100) + "-" + hex.str();
  }
  return "/chorus-" + job + "-" + tag;
}

// From this many bytes per rank, all_gather and broadcast read peers' buffers
// directly (Tuning::shm_cma_bytes overrides it; Tuning::shm_cma turns reads off).
constexpr size_t kCrossMemoryMinBytes = 64 * 1024;

}  // namespace

ShmGroup::ShmGroup(const InitOptions& options, std::string tag)
    : options_(options), rank_(options.rank), size_(options.size), tag_(std::move(tag)) {
  ctx_.backend = "shm";
  ctx_.rank = rank_;
  ctx_.size = size_;
  ctx_.hostname = options.hostname;
  name_ = make_segment_name(options.job_id, tag_);
  pending_.resize(size_);
  pending_off_.assign(size_, 0);
  skip_.assign(size_, 0);
  // The job's ranks on this machine compete for its cores too (a
  // hierarchical group's other hosts may be containers on it).
  const int competing = std::max(size_, options.machine_ranks);
  spin_budget_ = spin_budget(competing, kSpin, options.tuning.shm_spin);
  yield_budget_ = yield_budget(competing, options.tuning.shm_yield);
  cross_memory_min_bytes_ = options.tuning.shm_cma_bytes.value_or(kCrossMemoryMinBytes);
  rendezvous();
}

RankControl& ShmGroup::control(int r) const {
  return *reinterpret_cast<RankControl*>(segment_.data() + layout_.control_off +
                                         static_cast<size_t>(r) *
                                             round_up(sizeof(RankControl), kCacheLine));
}

char* ShmGroup::slot(int r, uint64_t phase) const {
  const size_t index = static_cast<size_t>(phase % kBuffers) * size_ + r;
  return segment_.data() + layout_.slots_off + index * layout_.slot_stride + kCacheLine;
}

WireDesc* ShmGroup::slot_desc(int r, uint64_t phase) const {
  return reinterpret_cast<WireDesc*>(slot(r, phase) - kCacheLine);
}

RingControl& ShmGroup::ring(int src, int dst) const {
  const size_t index = static_cast<size_t>(src) * (size_ - 1) + (dst < src ? dst : dst - 1);
  return *reinterpret_cast<RingControl*>(segment_.data() + layout_.rings_off +
                                         index * layout_.ring_stride);
}

char* ShmGroup::ring_data(int src, int dst) const {
  return reinterpret_cast<char*>(&ring(src, dst)) + round_up(sizeof(RingControl), kCacheLine);
}

}  // namespace chorus::shm
