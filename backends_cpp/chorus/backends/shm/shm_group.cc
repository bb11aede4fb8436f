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
// compares all of them, so a mismatch raises UsageError on every rank at the
// same phase and the group stays usable.
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

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <new>
#include <sstream>
#include <thread>

#include "chorus/algorithms/copy.h"
#include "chorus/common/cpu.h"
#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "chorus/common/logging.h"
#include "chorus/transport/shm/cross_memory.h"

namespace chorus::shm {
namespace {

using Clock = std::chrono::steady_clock;

// Long enough to cover the skew between ranks copying a chunk or a peer's
// block (a futex wake-up costs tens of microseconds in a VM: 1 MiB all_sum at
// N=2 ~145 -> ~125 us against 5 us), short enough to cost nothing when a
// peer is really late. Only when every rank has a core: see spin_budget().
constexpr auto kSpin = std::chrono::microseconds(50);
// Below this an all_reduce is one barrier: every rank reduces all slots.
constexpr size_t kSmallAllReduceBytes = 16 * 1024;
constexpr uint32_t kP2pMagic = 0x63703270;  // "p2pc"

// Thrown by a collective wait that finds an abort of an earlier call: the
// current call recovers and starts over (see run_collective).
struct RestartCall {
  uint32_t word;
};

struct P2pHeader {
  uint32_t magic;
  uint8_t dtype;
  uint8_t pad[3];
  uint64_t nbytes;
};
static_assert(sizeof(P2pHeader) == 16, "point-to-point header is sent as raw bytes");

uint32_t abort_word(uint32_t epoch, int reporter, bool aborted) {
  return (epoch & 0xffffu) << 16 | (static_cast<uint32_t>(reporter) & 0x7fffu) << 1 |
         (aborted ? 1u : 0u);
}
uint32_t abort_epoch(uint32_t word) { return word >> 16; }
int abort_reporter(uint32_t word) { return static_cast<int>((word >> 1) & 0x7fffu); }
bool abort_flag(uint32_t word) { return (word & 1u) != 0; }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

uint64_t fnv1a(const std::string& text) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

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

std::string seconds_text(double seconds) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1) << seconds << " s";
  return out.str();
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string out = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? ", " : "") + std::to_string(ranks[i]);
  return out;
}

// How long a wait spins, then yields, before it sleeps on the futex.
// CHORUS_SHM_SPIN_US / CHORUS_SHM_YIELD_US override them (measurements, and
// tests that need every wait to reach the futex and its interrupt check).
// When ranks outnumber cores the yield phase replaces the spin.
std::chrono::microseconds yield_budget(int ranks) {
  return env_micros("CHORUS_SHM_YIELD_US", ranks > usable_cores() ? std::chrono::microseconds(100)
                                                                  : std::chrono::microseconds(0));
}

// From this many bytes per rank, all_gather and broadcast read peers' buffers directly
// (CHORUS_SHM_CMA_BYTES overrides it; CHORUS_SHM_CMA=0 turns reads off).
constexpr size_t kCrossMemoryMinBytes = 64 * 1024;

// What a rank publishes in its slot in the first phase of a single-copy call.
struct CrossMemoryOffer {
  uint64_t address;   // the rank's buffer, in its own address space
  uint32_t can_read;  // 1: this rank can read every peer's memory
  uint32_t pad;
};

bool cross_memory_enabled() {
  const char* text = std::getenv("CHORUS_SHM_CMA");
  return text == nullptr || std::strcmp(text, "0") != 0;
}

size_t cross_memory_min_bytes() {
  const char* text = std::getenv("CHORUS_SHM_CMA_BYTES");
  return text ? static_cast<size_t>(std::strtoull(text, nullptr, 10)) : kCrossMemoryMinBytes;
}

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

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
  spin_budget_ = spin_budget(size_, kSpin, "CHORUS_SHM_SPIN_US");
  yield_budget_ = yield_budget(size_);
  cross_memory_min_bytes_ = cross_memory_min_bytes();
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

// ---------------------------------------------------------------- set-up

void ShmGroup::rendezvous() {
  const double start = now_s();
  const double deadline = start + options_.timeout_s;
  CHORUS_LOG(options_.verbose, "shm rank ", rank_, "/", size_, ": rendezvous on ", name_);
  try {
    if (rank_ == 0) {
      init_segment();
    } else {
      for (;;) {
        segment_ = Segment::try_open(name_);
        // The size can be from before the creator's fallocate finished:
        // only a mapping that covers the published total counts.
        if (segment_.valid() && segment_.size() >= sizeof(SegmentHeader) &&
            header().magic.load() == kSegmentMagic && segment_.size() >= header().total_bytes) {
          break;
        }
        if (now_s() > deadline) {
          segment_ = Segment();
          throw PeerTimeout(prefix() + "rank 0 did not create " + name_ + " within " +
                            seconds_text(options_.timeout_s) + never_joined_hint(1));
        }
        check_interrupt();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      validate_segment();
    }
    bell_ = Doorbell(&header().bell, &header().waiters);
    // Before the pid publishes this rank: a peer that sees the pid may probe.
    control(rank_).base.store(reinterpret_cast<uint64_t>(segment_.data()));
    if (size_ > 1 && cross_memory_enabled()) allow_peer_memory_reads();
    int32_t expected = 0;
    if (!control(rank_).pid.compare_exchange_strong(expected, static_cast<int32_t>(::getpid()))) {
      throw UsageError(prefix() + "rank " + std::to_string(rank_) + " attached to " + name_ +
                       " twice (pid " + std::to_string(expected) +
                       " has it already): two processes were given the same rank");
    }
    bell_.ring();
    wait_for_attach(deadline);
  } catch (const PeerTimeout&) {
    throw;  // every waiting rank reaches its own deadline and names the missing ranks
  } catch (...) {
    // Let the others fail fast instead of waiting for their deadline.
    if (segment_.valid()) {
      int32_t none = 0;
      header().setup_failed_by.compare_exchange_strong(none, rank_ + 1);
      bell_ = Doorbell(&header().bell, &header().waiters);
      bell_.ring_always();
    }
    throw;  // rank 0's Segment unlinks the name in its destructor
  }
  // Every rank holds a mapping now: the name can go, so that a crash later
  // leaves nothing behind in /dev/shm.
  segment_.unlink();
  peers_.reserve(size_);
  for (int r = 0; r < size_; ++r) peers_.emplace_back(static_cast<pid_t>(control(r).pid.load()));
  cross_memory_ = probe_cross_memory();
  CHORUS_LOG(options_.verbose, "shm rank ", rank_, "/", size_, ": all ", size_,
             " ranks attached to ", name_, " (", layout_.total_bytes, " bytes, chunk ",
             layout_.chunk_bytes, ", ring ", layout_.ring_bytes, ", single-copy reads ",
             cross_memory_ ? "on" : "off", ") in ", seconds_text(now_s() - start));
}

bool ShmGroup::probe_cross_memory() {
  if (size_ < 2 || !cross_memory_enabled()) return false;
  // Every peer's mapping starts with the segment magic: read it from there.
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    uint64_t magic = 0;
    const int err =
        read_peer_memory(peers_[r].pid(), reinterpret_cast<const void*>(control(r).base.load()),
                         &magic, sizeof magic);
    if (err != 0 || magic != kSegmentMagic) {
      CHORUS_LOG(options_.verbose, "shm rank ", rank_, "/", size_,
                 ": cannot read the memory of rank ", r, " (",
                 err != 0 ? std::strerror(err) : "unexpected bytes",
                 "): all_gather and broadcast copy through the segment");
      return false;
    }
  }
  return true;
}

void ShmGroup::init_segment() {
  const size_t n = static_cast<size_t>(size_);
  size_t chunk = options_.segment_bytes != 0 ? options_.segment_bytes : 256 * 1024;
  // Every slot must hold one element of the widest dtype per rank (reduce_scatter).
  chunk = round_up(std::max<size_t>({chunk, 64, n * 16}), kCacheLine);
  size_t ring_bytes = chunk;
  if (options_.segment_bytes == 0) {
    // 1 MiB per ordered pair, but bounded in total for large groups.
    ring_bytes = std::clamp<size_t>((32u << 20) / (n * (n - 1)), 16 * 1024, 1u << 20) / kCacheLine *
                 kCacheLine;
  }
  layout_ = Layout::compute(size_, chunk, ring_bytes);
  segment_ = Segment::create(name_, layout_.total_bytes);
  char* base = segment_.data();
  auto* hdr = new (base) SegmentHeader{};
  hdr->version = kSegmentVersion;
  hdr->nranks = static_cast<uint32_t>(size_);
  hdr->total_bytes = layout_.total_bytes;
  hdr->token_hash = fnv1a(options_.token);
  hdr->chunk_bytes = layout_.chunk_bytes;
  hdr->ring_bytes = layout_.ring_bytes;
  for (int r = 0; r < size_; ++r) new (&control(r)) RankControl{};
  for (int s = 0; s < size_; ++s) {
    for (int d = 0; d < size_; ++d) {
      if (s != d) new (&ring(s, d)) RingControl{};
    }
  }
  hdr->magic.store(kSegmentMagic);  // publishes everything above
  CHORUS_LOG(options_.verbose, "shm rank 0/", size_, ": created ", name_, " (", layout_.total_bytes,
             " bytes)");
}

void ShmGroup::validate_segment() {
  const SegmentHeader& hdr = header();
  if (hdr.version != kSegmentVersion) {
    throw BackendUnavailable(prefix() + name_ + " has layout version " +
                             std::to_string(hdr.version) + ", this build expects " +
                             std::to_string(kSegmentVersion) + " (mixed chorus builds?)");
  }
  if (hdr.nranks != static_cast<uint32_t>(size_)) {
    throw UsageError(prefix() + name_ + " was created for " + std::to_string(hdr.nranks) +
                     " ranks, this rank expects " + std::to_string(size_));
  }
  layout_ = Layout::compute(size_, hdr.chunk_bytes, hdr.ring_bytes);
  if (layout_.total_bytes != hdr.total_bytes || segment_.size() < layout_.total_bytes) {
    throw BackendUnavailable(prefix() + name_ + " has " + std::to_string(segment_.size()) +
                             " bytes, expected " + std::to_string(layout_.total_bytes));
  }
  if (hdr.token_hash != fnv1a(options_.token)) {
    int32_t none = 0;
    header().bad_token_by.compare_exchange_strong(none, rank_ + 1);
    Doorbell(&header().bell, &header().waiters).ring_always();
    throw UsageError(prefix() + "token mismatch: " + name_ +
                     " was created by rank 0 with a different token (CHORUS_TOKEN differs "
                     "between ranks); refusing to join");
  }
}

void ShmGroup::wait_for_attach(double deadline) {
  std::vector<int> missing;
  for (;;) {
    const uint32_t ticket = bell_.begin_wait();
    missing.clear();
    for (int r = 0; r < size_; ++r) {
      if (control(r).pid.load() == 0) missing.push_back(r);
    }
    const int32_t bad_token = header().bad_token_by.load();
    const int32_t failed = header().setup_failed_by.load();
    if (missing.empty() || bad_token != 0 || failed != 0 || now_s() > deadline) {
      bell_.end_wait();
      if (bad_token != 0) {
        throw UsageError(prefix() + "rank " + std::to_string(bad_token - 1) +
                         " presented a different token to " + name_ +
                         " (CHORUS_TOKEN differs between ranks)");
      }
      if (failed != 0) {
        throw PeerError(prefix() + "rank " + std::to_string(failed - 1) + " gave up setting up " +
                        name_ + " (see its error)");
      }
      if (missing.empty()) return;
      throw PeerTimeout(prefix() + rank_list(missing) + " did not attach to " + name_ + " within " +
                        seconds_text(options_.timeout_s) + never_joined_hint(missing.size()));
    }
    bell_.sleep(ticket, kInterruptPollMs);
    bell_.end_wait();
    check_interrupt();
  }
}

// ---------------------------------------------------------------- waiting

template <typename Ready, typename Blockers>
void ShmGroup::wait(Ready&& ready, Blockers&& blockers, WaitKind kind) {
  const bool collective = kind == WaitKind::Collective;
  auto check_abort = [&] {
    if (!collective) return;
    const uint32_t word = header().abort_word.load();
    if (!abort_flag(word)) return;
    const uint32_t call = control(abort_reporter(word)).abort_call.load();
    if (call == calls_) throw_abort(word);
    // An earlier call: recover and redo this one. A later call: the others
    // passed our barrier already, which ready() is about to see.
    if (static_cast<int32_t>(call - calls_) < 0) throw RestartCall{word};
  };
  check_abort();
  if (ready()) return;
  // A short spin catches peers that are a little behind without a syscall;
  // anything longer sleeps, since ranks may outnumber cores.
  const auto spin_end = Clock::now() + spin_budget_;
  while (Clock::now() < spin_end) {
    for (int i = 0; i < 32; ++i) cpu_relax();
    check_abort();
    if (ready()) return;
  }
  auto poll_interrupt = [&] {
    try {
      check_interrupt();
    } catch (const Interrupted& e) {
      if (collective) {
        publish_abort("rank " + std::to_string(rank_) + " " + e.what_happened() + " during " + op_,
                      e.reason(), rank_);
      }
      throw;
    }
  };
  // More ranks than cores: the rank we wait for may need this core. Yielding
  // hands it over without the futex round trip (a sleeping rank is woken by
  // an IPI, which in a VM costs tens of microseconds), and never starves
  // anyone: sched_yield returns at once only when nobody else wants the core.
  if (yield_budget_.count() > 0) {
    const auto yield_end = Clock::now() + yield_budget_;
    do {
      sched_yield();
      check_abort();
      if (ready()) return;
      // A long collective whose waits all end while yielding must still
      // notice Ctrl-C (the hook takes the GIL: not every round).
      const auto now = Clock::now();
      if (now >= next_interrupt_poll_) {
        next_interrupt_poll_ = now + std::chrono::milliseconds(kInterruptPollMs / 5);
        poll_interrupt();
      }
    } while (Clock::now() < yield_end);
  }

  auto last_liveness = Clock::now();
  for (;;) {
    const uint32_t ticket = bell_.begin_wait();
    FutexWake wake = FutexWake::Woken;
    bool done = false;
    try {
      check_abort();
      done = ready();
      if (!done) wake = bell_.sleep(ticket, kInterruptPollMs);
    } catch (...) {
      bell_.end_wait();
      throw;
    }
    bell_.end_wait();
    if (done) return;
    poll_interrupt();
    const auto now = Clock::now();
    if (wake != FutexWake::Woken ||
        now - last_liveness >= std::chrono::milliseconds(kInterruptPollMs)) {
      last_liveness = now;
      blockers([&](int peer) { check_peer_alive(peer, kind); });
    }
    check_abort();
    if (ready()) return;
  }
}

void ShmGroup::check_peer_alive(int peer, WaitKind kind) {
  if (!peers_[peer].alive()) peer_died(peer, kind);
}

void ShmGroup::peer_died(int peer, WaitKind kind) {
  std::string reason = "rank " + std::to_string(peer) + " (pid " +
                       std::to_string(peers_[peer].pid()) + ") died during " + op_;
  if (kind == WaitKind::Collective) reason += " #" + std::to_string(seq_) + last_call_of(peer);
  if (kind == WaitKind::Collective) publish_abort(reason, Reason::Died, peer);
  broken_ = reason + "; the group cannot be used any more";
  broken_by_ = peer;
  throw PeerError(prefix() + reason, failure(Reason::Died, peer));
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
      prefix() + op_ + " aborted: " + reason,
      failure(reason_from_wire(reporter.abort_why.load()), reporter.abort_culprit.load()));
}

void ShmGroup::check_usable() const {
  if (!broken_.empty()) throw PeerError(prefix() + broken_, failure(Reason::Died, broken_by_));
}

// ---------------------------------------------------------------- collectives

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

void ShmGroup::begin_collective(const CallDesc& desc) {
  op_ = collective_name(desc.kind, desc.op);
  check_usable();
  ++calls_;
  ++seq_;
  RankControl& me = control(rank_);
  me.entered_op.store(static_cast<uint32_t>(desc.kind) << 8 | static_cast<uint32_t>(desc.op),
                      std::memory_order_relaxed);
  me.entered.store(seq_, std::memory_order_relaxed);
  const uint64_t interrupts = interrupt_count();
  const bool interrupted_on_the_way = interrupts != interrupts_at_last_call_;
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
  throw PeerError(prefix() + op_ + " #" + std::to_string(seq_) +
                      " was aborted before this rank arrived (" + reason +
                      "); the other ranks have moved on, so the next call works",
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

void ShmGroup::check_descs(uint64_t phase) {
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
  // Every rank reads the same descriptors, so every rank raises this same text.
  throw UsageError(prefix() + op_ + ": ranks disagree on the call: " + disagreement(all));
}

void ShmGroup::arrive_and_wait() {
  ++arrivals_;
  const uint32_t target = static_cast<uint32_t>(arrivals_);
  control(rank_).seq.store(target);
  bell_.ring();
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
      WaitKind::Collective);
}

void ShmGroup::reduce_slots(ReduceKernel kernel, void* dst, uint64_t phase, size_t offset,
                            size_t count) const {
  // Always rank order, so every element is reduced identically on every rank.
  kernel(dst, slot(0, phase) + offset, slot(1, phase) + offset, count);
  for (int r = 2; r < size_; ++r) kernel(dst, dst, slot(r, phase) + offset, count);
}

void ShmGroup::all_reduce(const CallDesc& desc, const void* in, void* out) {
  run_collective(desc, [&] {
    const ReduceKernel kernel = reduce_kernel(desc.dtype, desc.op);
    const size_t es = dtype_size(desc.dtype);
    const size_t count = static_cast<size_t>(desc.count);
    const size_t nbytes = count * es;
    const char* src = static_cast<const char*>(in);
    char* dst = static_cast<char*>(out);
    const uint64_t p0 = arrivals_;

    if (nbytes <= std::min(layout_.chunk_bytes, kSmallAllReduceBytes)) {
      // One barrier: everyone publishes its whole input, then reduces all of it.
      write_desc(p0, desc);
      if (nbytes != 0) std::memcpy(slot(rank_, p0), src, nbytes);
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
        copy_result(dst + (j - 2) * per_chunk * es, slot(0, phase - 2), chunk_count(j - 2) * es,
                    nbytes);
      }
      if (j >= 1 && j <= nchunks) {
        const size_t n = chunk_count(j - 1);
        const size_t lo = n * rank_ / size_;
        const size_t hi = n * (rank_ + 1) / size_;
        if (hi > lo)
          reduce_slots(kernel, slot(0, phase - 1) + lo * es, phase - 1, lo * es, hi - lo);
      }
      if (j < nchunks)
        std::memcpy(slot(rank_, phase), src + j * per_chunk * es, chunk_count(j) * es);
      if (j == 0) write_desc(phase, desc);
      if (j <= nchunks) {
        arrive_and_wait();
        if (j == 0) check_descs(p0);
      }
    }
  });
}

void ShmGroup::all_gather(const CallDesc& desc, const void* in, void* out) {
  run_collective(desc, [&] {
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
  });
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
  const std::string reason = "rank " + std::to_string(rank_) +
                             " could not read the buffer of rank " + std::to_string(r) +
                             " during " + op_ + ": " + std::strerror(err);
  publish_abort(reason, Reason::Aborted, rank_);
  throw PeerError(prefix() + reason, failure(Reason::Aborted, r));
}

void ShmGroup::all_gather_chunked(const CallDesc& desc, const char* src, char* dst) {
  const size_t nbytes = desc.nbytes();
  const size_t chunk = layout_.chunk_bytes;
  const size_t nchunks = (nbytes + chunk - 1) / chunk;
  const size_t nbarriers = std::max<size_t>(nchunks, 1);
  const uint64_t p0 = arrivals_;
  for (size_t j = 0; j <= nbarriers; ++j) {
    const uint64_t phase = p0 + j;
    if (j >= 1 && j - 1 < nchunks) {
      const size_t off = (j - 1) * chunk;
      const size_t len = std::min(chunk, nbytes - off);
      for (int r = 0; r < size_; ++r)
        copy_result(dst + r * nbytes + off, slot(r, phase - 1), len, nbytes * size_);
    }
    if (j < nchunks) {
      std::memcpy(slot(rank_, phase), src + j * chunk, std::min(chunk, nbytes - j * chunk));
    }
    if (j == 0) write_desc(phase, desc);
    if (j < nbarriers) {
      arrive_and_wait();
      if (j == 0) check_descs(p0);
    }
  }
}

void ShmGroup::broadcast(const CallDesc& desc, void* buf) {
  run_collective(desc, [&] {
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
  });
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

// ---------------------------------------------------------------- point to point
//
// Each ordered pair (src, dst) has a byte ring; a message is a P2pHeader and
// the payload. A send blocked on a full ring drains every incoming ring into
// a local buffer meanwhile, so two ranks (or a cycle) sending to each other
// before receiving progress at any size.

void ShmGroup::check_ring(int src) const {
  if (ring(src, rank_).broken.load() != 0) {
    throw PeerError(prefix() + "rank " + std::to_string(src) +
                    " abandoned a message to this rank half-way (interrupted); point to point "
                    "from rank " +
                    std::to_string(src) + " to rank " + std::to_string(rank_) +
                    " cannot be used any more");
  }
}

bool ShmGroup::drain_incoming() {
  bool any = false;
  const size_t rb = layout_.ring_bytes;
  for (int src = 0; src < size_; ++src) {
    if (src == rank_) continue;
    RingControl& rc = ring(src, rank_);
    const uint64_t head = rc.head.load();
    uint64_t tail = rc.tail.load();
    if (head == tail) continue;
    std::vector<char>& queue = pending_[src];
    const char* data = ring_data(src, rank_);
    while (tail != head) {
      const size_t off = static_cast<size_t>(tail % rb);
      const size_t len = std::min<uint64_t>(head - tail, rb - off);
      queue.insert(queue.end(), data + off, data + off + len);
      tail += len;
    }
    rc.tail.store(tail);
    any = true;
  }
  if (any) bell_.ring();
  return any;
}

void ShmGroup::stream_write(int dst, const void* data, size_t nbytes, size_t& done) {
  RingControl& rc = ring(rank_, dst);
  char* base = ring_data(rank_, dst);
  const size_t rb = layout_.ring_bytes;
  const char* src = static_cast<const char*>(data);
  uint64_t head = rc.head.load();
  while (nbytes > 0) {
    const uint64_t used = head - rc.tail.load();
    if (used == rb) {
      wait(
          [&] {
            drain_incoming();
            return head - rc.tail.load() < rb;
          },
          [&](auto&& check) { check(dst); }, WaitKind::PointToPoint);
      continue;
    }
    const size_t off = static_cast<size_t>(head % rb);
    const size_t len = std::min<size_t>({nbytes, rb - used, rb - off});
    std::memcpy(base + off, src, len);
    head += len;
    rc.head.store(head);
    bell_.ring();
    src += len;
    nbytes -= len;
    done += len;
  }
}

size_t ShmGroup::available(int src) {
  const RingControl& rc = ring(src, rank_);
  return pending_[src].size() - pending_off_[src] +
         static_cast<size_t>(rc.head.load() - rc.tail.load());
}

void ShmGroup::stream_read(int src, void* data, size_t nbytes, size_t& done) {
  RingControl& rc = ring(src, rank_);
  const char* base = ring_data(src, rank_);
  const size_t rb = layout_.ring_bytes;
  char* out = static_cast<char*>(data);
  while (nbytes > 0) {
    std::vector<char>& queue = pending_[src];
    size_t& queue_off = pending_off_[src];
    size_t len = 0;
    if (queue_off < queue.size()) {  // older bytes first
      len = std::min(nbytes, queue.size() - queue_off);
      if (out != nullptr) std::memcpy(out, queue.data() + queue_off, len);
      queue_off += len;
      if (queue_off == queue.size()) {
        queue.clear();
        queue_off = 0;
      }
    } else {
      const uint64_t tail = rc.tail.load();
      const uint64_t head = rc.head.load();
      if (head == tail) {
        wait(
            [&] {
              check_ring(src);
              return rc.head.load() != tail;
            },
            [&](auto&& check) { check(src); }, WaitKind::PointToPoint);
        continue;
      }
      const size_t off = static_cast<size_t>(tail % rb);
      len = std::min<size_t>({nbytes, static_cast<size_t>(head - tail), rb - off});
      if (out != nullptr) std::memcpy(out, base + off, len);
      rc.tail.store(tail + len);
      bell_.ring();
    }
    if (out != nullptr) out += len;
    nbytes -= len;
    done += len;
  }
}

void ShmGroup::send(const void* buf, size_t nbytes, Dtype dtype, int dst, int /*tag: always 0*/) {
  op_ = "send to rank " + std::to_string(dst);
  check_usable();
  P2pHeader hdr{};
  hdr.magic = kP2pMagic;
  hdr.dtype = static_cast<uint8_t>(dtype);
  hdr.nbytes = nbytes;
  size_t done = 0;
  try {
    stream_write(dst, &hdr, sizeof hdr, done);
    stream_write(dst, buf, nbytes, done);
  } catch (...) {
    if (done > 0 && done < sizeof hdr + nbytes) {
      // The receiver could not tell where the next message starts.
      ring(rank_, dst).broken.store(1);
      bell_.ring_always();
    }
    throw;
  }
}

void ShmGroup::recv(void* buf, size_t nbytes, Dtype dtype, int src, int /*tag: always 0*/) {
  op_ = "recv from rank " + std::to_string(src);
  check_usable();
  size_t done = 0;
  if (skip_[src] > 0) {  // the rest of a message an interrupt made us abandon
    try {
      stream_read(src, nullptr, skip_[src], done);
    } catch (...) {
      skip_[src] -= done;
      throw;
    }
    skip_[src] = 0;
    done = 0;
  }
  // Wait for the whole header first, so an interrupt never splits it.
  if (available(src) < sizeof(P2pHeader)) {
    wait(
        [&] {
          check_ring(src);
          return available(src) >= sizeof(P2pHeader);
        },
        [&](auto&& check) { check(src); }, WaitKind::PointToPoint);
  }
  P2pHeader hdr{};
  stream_read(src, &hdr, sizeof hdr, done);
  CHORUS_CHECK(hdr.magic == kP2pMagic,
               "corrupt point-to-point stream from rank " + std::to_string(src));
  const bool match = hdr.nbytes == nbytes && hdr.dtype == static_cast<uint8_t>(dtype);
  done = 0;
  try {
    stream_read(src, match ? buf : nullptr, static_cast<size_t>(hdr.nbytes), done);
  } catch (...) {
    skip_[src] = hdr.nbytes - done;
    throw;
  }
  if (!match) {
    const Dtype sent = static_cast<Dtype>(hdr.dtype);
    throw UsageError(prefix() + "recv from rank " + std::to_string(src) + " expected " +
                     std::to_string(nbytes) + " bytes of " + dtype_name(dtype) + " but rank " +
                     std::to_string(src) + " sent " + std::to_string(hdr.nbytes) + " bytes of " +
                     dtype_name(sent));
  }
}

}  // namespace chorus::shm
