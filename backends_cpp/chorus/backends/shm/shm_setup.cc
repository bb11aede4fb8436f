// Set-up: rank 0 creates the segment, the others attach and check it, every
// rank waits until all attached, then probes whether it can read its peers'
// memory (single copy).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iomanip>
#include <new>
#include <sstream>
#include <thread>

#include "chorus/backends/shm/shm_group.h"
#include "chorus/backends/shm/shm_group_inl.h"
#include "chorus/common/error.h"
#include "chorus/common/interrupt.h"
#include "chorus/common/logging.h"
#include "chorus/transport/shm/cross_memory.h"

namespace chorus::shm {
namespace {

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

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

}  // namespace

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
          throw PeerTimeout(Said{prefix(), "rank 0 did not create " + name_ + " within " +
                                               seconds_text(options_.timeout_s) +
                                               never_joined_hint(1)});
        }
        check_interrupt();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      validate_segment();
    }
    bell_ = Doorbell(&header().bell, &header().waiters);
    // Before the pid publishes this rank: a peer that sees the pid may probe.
    control(rank_).base.store(reinterpret_cast<uint64_t>(segment_.data()));
    if (size_ > 1 && options_.tuning.shm_cma) allow_peer_memory_reads();
    int32_t expected = 0;
    if (!control(rank_).pid.compare_exchange_strong(expected, static_cast<int32_t>(::getpid()))) {
      throw UsageError(
          Said{prefix(), "rank " + std::to_string(rank_) + " attached to " + name_ +
                             " twice (pid " + std::to_string(expected) +
                             " has it already): two processes were given the same rank"});
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
  if (size_ < 2 || !options_.tuning.shm_cma) return false;
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
    throw BackendUnavailable(
        Said{prefix(), name_ + " has layout version " + std::to_string(hdr.version) +
                           ", this build expects " + std::to_string(kSegmentVersion) +
                           " (mixed chorus builds?)"});
  }
  if (hdr.nranks != static_cast<uint32_t>(size_)) {
    throw UsageError(Said{prefix(), name_ + " was created for " + std::to_string(hdr.nranks) +
                                        " ranks, this rank expects " + std::to_string(size_)});
  }
  layout_ = Layout::compute(size_, hdr.chunk_bytes, hdr.ring_bytes);
  if (layout_.total_bytes != hdr.total_bytes || segment_.size() < layout_.total_bytes) {
    throw BackendUnavailable(Said{prefix(), name_ + " has " + std::to_string(segment_.size()) +
                                                " bytes, expected " +
                                                std::to_string(layout_.total_bytes)});
  }
  if (hdr.token_hash != fnv1a(options_.token)) {
    int32_t none = 0;
    header().bad_token_by.compare_exchange_strong(none, rank_ + 1);
    Doorbell(&header().bell, &header().waiters).ring_always();
    throw UsageError(
        Said{prefix(), "token mismatch: " + name_ +
                           " was created by rank 0 with a different token (CHORUS_TOKEN differs "
                           "between ranks); refusing to join"});
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
        throw UsageError(Said{prefix(), "rank " + std::to_string(bad_token - 1) +
                                            " presented a different token to " + name_ +
                                            " (CHORUS_TOKEN differs between ranks)"});
      }
      if (failed != 0) {
        throw PeerError(Said{prefix(), "rank " + std::to_string(failed - 1) +
                                           " gave up setting up " + name_ + " (see its error)"});
      }
      if (missing.empty()) return;
      throw PeerTimeout(Said{prefix(), rank_list(missing) + " did not attach to " + name_ +
                                           " within " + seconds_text(options_.timeout_s) +
                                           never_joined_hint(missing.size())});
    }
    bell_.sleep(ticket, kInterruptPollMs);
    bell_.end_wait();
    check_interrupt();
  }
}

}  // namespace chorus::shm
