// Point to point. Each ordered pair (src, dst) has a byte ring; a message is
// a P2pHeader and the payload. A send blocked on a full ring drains every
// incoming ring into a local buffer meanwhile, so two ranks (or a cycle)
// sending to each other before receiving progress at any size.
#include <algorithm>
#include <cstring>

#include "chorus/backends/shm/shm_group.h"
#include "chorus/backends/shm/shm_group_inl.h"
#include "chorus/common/error.h"

namespace chorus::shm {
namespace {

constexpr uint32_t kP2pMagic = 0x63703270;  // "p2pc"

struct P2pHeader {
  uint32_t magic;
  uint8_t dtype;
  uint8_t pad[3];
  uint64_t nbytes;
};
static_assert(sizeof(P2pHeader) == 16, "point-to-point header is sent as raw bytes");

}  // namespace

void ShmGroup::check_ring(int src) const {
  if (ring(src, rank_).broken.load() != 0) {
    throw PeerError(Said{
        prefix(), "rank " + std::to_string(src) +
                      " abandoned a message to this rank half-way (interrupted); point to point "
                      "from rank " +
                      std::to_string(src) + " to rank " + std::to_string(rank_) +
                      " cannot be used any more"});
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
    throw UsageError(Said{
        prefix(), "recv from rank " + std::to_string(src) + " expected " + std::to_string(nbytes) +
                      " bytes of " + dtype_name(dtype) + " but rank " + std::to_string(src) +
                      " sent " + std::to_string(hdr.nbytes) + " bytes of " + dtype_name(sent)});
  }
}

}  // namespace chorus::shm
