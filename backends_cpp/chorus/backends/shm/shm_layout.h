// Layout of one shm group's segment. All ranks map the same bytes; the
// creator (group rank 0) writes the header and publishes `magic` last.
//
//   SegmentHeader                 magic, version, sizes, token hash, doorbell,
//                                 abort word, set-up failure words
//   RankControl[N]                pid, mapping address, recovery ack, barrier sequence,
//                                 abort reason
//   slots[3][N]                   64-byte slot header (WireDesc) + chunk_bytes data;
//                                 collectives rotate over the 3 buffers by phase
//   rings[N * (N-1)]              per ordered pair (src, dst): head/tail + ring_bytes
//
// Every control word sits on its own cache line: ranks spin briefly on them.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "chorus/backends/call_wire.h"
#include "chorus/backends/group_impl.h"

namespace chorus::shm {

constexpr uint64_t kSegmentMagic = 0x31766d6873726863ULL;  // "chrshmv1"
constexpr uint32_t kSegmentVersion = 3;
constexpr size_t kCacheLine = 64;
constexpr size_t kReasonBytes = 512;
constexpr int kBuffers = 3;  // see the phase rule in shm_group.cc

struct SegmentHeader {
  std::atomic<uint64_t> magic;  // kSegmentMagic once the rest is written
  uint32_t version;
  uint32_t nranks;
  uint64_t total_bytes;
  uint64_t token_hash;
  uint64_t chunk_bytes;
  uint64_t ring_bytes;
  // Doorbell: bumped after every change of shared state, futex word.
  alignas(kCacheLine) std::atomic<uint32_t> bell;
  std::atomic<uint32_t> waiters;
  // epoch << 16 | reporter rank << 1 | aborted (see abort_word() in shm_group_inl.h).
  alignas(kCacheLine) std::atomic<uint32_t> abort_word;
  std::atomic<int32_t> setup_failed_by;  // rank + 1 of a rank that gave up during set-up
  std::atomic<int32_t> bad_token_by;     // rank + 1 of a rank whose token differs
};

struct RankControl {
  alignas(kCacheLine) std::atomic<int32_t> pid;  // 0 until this rank attached
  std::atomic<uint64_t> base;          // where this rank mapped the segment (cross-memory probe)
  std::atomic<uint32_t> ack;           // abort epoch this rank recovered to
  std::atomic<uint32_t> abort_call;    // call number (in its epoch) it aborted
  std::atomic<uint32_t> abort_why;     // and why: a Reason, as on the TCP backends' wire
  std::atomic<int32_t> abort_culprit;  // the rank it blames (itself, or a dead peer)
  // The last collective it entered (its number on the group, and kind << 8 |
  // op): a peer's failure message says whether it ever reached the call.
  std::atomic<uint64_t> entered;
  std::atomic<uint32_t> entered_op;
  alignas(kCacheLine) std::atomic<uint32_t> seq;  // barriers arrived at in this epoch
  alignas(kCacheLine) char reason[kReasonBytes];  // abort reason this rank published
};

struct RingControl {
  alignas(kCacheLine) std::atomic<uint64_t> head;  // bytes written, by the sender
  alignas(kCacheLine) std::atomic<uint64_t> tail;  // bytes consumed, by the receiver
  std::atomic<uint32_t> broken;                    // the sender abandoned a message half-way
};

static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared words must be lock-free");
static_assert(sizeof(WireDesc) <= kCacheLine, "a slot header holds one WireDesc");

inline size_t round_up(size_t value, size_t to) { return (value + to - 1) / to * to; }

struct Layout {
  int nranks = 0;
  size_t chunk_bytes = 0;  // data bytes of one slot
  size_t ring_bytes = 0;   // data bytes of one point-to-point ring
  size_t control_off = 0, slots_off = 0, slot_stride = 0, rings_off = 0, ring_stride = 0;
  size_t total_bytes = 0;

  static Layout compute(int nranks, size_t chunk_bytes, size_t ring_bytes) {
    Layout l;
    l.nranks = nranks;
    l.chunk_bytes = chunk_bytes;
    l.ring_bytes = ring_bytes;
    const size_t n = static_cast<size_t>(nranks);
    size_t off = round_up(sizeof(SegmentHeader), kCacheLine);
    l.control_off = off;
    off += n * round_up(sizeof(RankControl), kCacheLine);
    l.slots_off = off;
    l.slot_stride = kCacheLine + chunk_bytes;
    off += kBuffers * n * l.slot_stride;
    l.rings_off = off;
    l.ring_stride = round_up(sizeof(RingControl), kCacheLine) + ring_bytes;
    off += n * (n - 1) * l.ring_stride;
    l.total_bytes = round_up(off, 4096);
    return l;
  }
};

}  // namespace chorus::shm
