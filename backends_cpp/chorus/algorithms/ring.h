// Ring collectives written against RingPair, the two neighbour links as an
// algorithm sees them: ordered frames of bytes, no sockets, no dtypes (a
// ReduceKernel and an element size are all a reduction needs).
//
// Large messages use both ring directions at once: the buffer is cut into two
// lanes; lane 0 flows clockwise (to the right), lane 1 counter-clockwise.
// Each lane is cut into N blocks and each block into segments of at most
// `segment` bytes, so reduce-scatter and all-gather pipeline segment by
// segment. Every element is reduced in one fixed order by exactly one owner
// and then copied, so results are bit-identical on every rank.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "chorus/algorithms/reduce.h"

namespace chorus::algo {

enum class Side : int { Left = 0, Right = 1 };

class RingPair {
 public:
  virtual ~RingPair() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // One frame of n bytes to a neighbour; data stays valid until wait_send()
  // of the returned ticket, or wait_sends().
  virtual uint64_t isend(Side to, const void* data, size_t n) = 0;
  virtual void wait_send(Side to, uint64_t ticket) = 0;
  // One frame whose bytes the transport owns (small, variable-size messages).
  virtual void isend_owned(Side to, std::vector<uint8_t> bytes) = 0;
  // The next frame from a neighbour, exactly n bytes, lands in data.
  virtual uint64_t irecv(Side from, void* data, size_t n) = 0;
  virtual void wait_recv(Side from, uint64_t ticket) = 0;
  // The next frame from a neighbour, whatever its size.
  virtual std::vector<uint8_t> recv_bytes(Side from) = 0;
  virtual void wait_sends() = 0;
};

struct Range {
  size_t offset = 0;
  size_t length = 0;
};

// Where block b of each lane lives in the working buffer, in bytes.
struct RingLayout {
  std::vector<Range> lane[2];
};

// all_reduce: the buffer's two halves are the lanes; each half is cut into n
// nearly equal blocks (sizes differ by at most one element).
RingLayout layout_halves(size_t count, size_t elem, int n);
// reduce_scatter / all_gather: block b is bytes [b * block, (b + 1) * block)
// of the buffer (block = block_count elements); lane 0 takes its first half.
RingLayout layout_blocks(size_t block_count, size_t elem, int n);

// This rank's contribution is read from `in` (which may be `buf`); after the
// call buf holds the full reduction of block r of both lanes (other blocks
// of buf hold partial sums, except the one sent first, which is untouched).
// Reading `in` directly saves copying the input into buf first. `scratch`
// receives the peers' segments in a window of a few segments per lane (its
// size does not grow with the message); keeping it across calls avoids
// allocating and page-faulting fresh memory every call.
void ring_reduce_scatter(RingPair& pair, const RingLayout& layout, ReduceKernel kernel, size_t elem,
                         size_t segment, const uint8_t* in, uint8_t* buf,
                         std::vector<uint8_t>& scratch);
// The same, with no buffer as large as the input: partial sums pass through
// a window of forward slots in `scratch`, and block r of both lanes lands in
// `own` (lane 0's part at offset 0, lane 1's right after it, as
// layout_blocks places them).
void ring_reduce_scatter_own(RingPair& pair, const RingLayout& layout, ReduceKernel kernel,
                             size_t elem, size_t segment, const uint8_t* in, uint8_t* own,
                             std::vector<uint8_t>& scratch);
// Rank r starts with block r of both lanes; afterwards every rank has all.
void ring_all_gather(RingPair& pair, const RingLayout& layout, size_t elem, size_t segment,
                     uint8_t* buf);
// reduce_scatter (from `in`) then all_gather, into buf, on layout_halves.
void ring_all_reduce(RingPair& pair, ReduceKernel kernel, size_t elem, size_t count, size_t segment,
                     const uint8_t* in, uint8_t* buf, std::vector<uint8_t>& scratch);
// buf[nbytes] from root to everyone: lane 0 clockwise, lane 1 the other way.
void ring_broadcast(RingPair& pair, int root, size_t elem, size_t count, size_t segment,
                    uint8_t* buf);

// Small-message path: every rank's record travels once around the ring
// (N-1 hops, one frame each). Returns all records in rank order.
std::vector<std::vector<uint8_t>> ring_gather_records(RingPair& pair, std::vector<uint8_t> mine);

}  // namespace chorus::algo
