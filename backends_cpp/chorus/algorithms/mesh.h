// Collectives over a full mesh, written against MeshPeers: an ordered frame
// channel to every other rank, nothing about sockets or dtypes (a
// ReduceKernel and an element size are all a reduction needs).
//
// Large messages go direct: the buffer is cut into N blocks (block b belongs
// to rank b) and each block into segments of at most `segment` bytes.
// Reduce-scatter sends block b straight to rank b, which reduces the N
// contributions in rank order (x0 + x1 + ... + x(N-1)); all-gather sends each
// owner's result straight to everyone. Every rank sends 2(N-1)/N of the
// buffer, as in a ring, but over N-1 links at once and in one hop. Each
// element is reduced by exactly one rank in one fixed order and then copied,
// so results are bit-identical everywhere.
//
// Small messages do not come here: the backend exchanges whole vectors in
// its descriptor round and reduces them with reduce_in_rank_order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "chorus/algorithms/reduce.h"

namespace chorus::algo {

class MeshPeers {
 public:
  virtual ~MeshPeers() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // One frame of n bytes to `peer`; data stays valid until wait_sends().
  virtual void isend(int peer, const void* data, size_t n) = 0;
  // The next frame from `peer`; it must hold exactly n bytes (a transport
  // error otherwise). The caller owns the returned bytes.
  virtual std::vector<uint8_t> recv_exact(int peer, size_t n) = 0;
  virtual void wait_sends() = 0;
};

// Bytes [offset, offset + length) of the working buffer.
struct Block {
  size_t offset = 0;
  size_t length = 0;
};

// count elements cut into n blocks whose sizes differ by at most one element.
std::vector<Block> blocks_even(size_t count, size_t elem, int n);
// Block b = elements [b * block_count, (b + 1) * block_count).
std::vector<Block> blocks_fixed(size_t block_count, size_t elem, int n);

// A block made of pieces of the working buffer, taken one after another (a
// host of a hierarchical group sends another host the blocks of that host's
// ranks, which need not lie next to each other).
using Pieces = std::vector<Block>;

// Reduces every rank's block `rank` of `in` into out_block (blocks[rank].length
// bytes; may alias that block of in). Sends read `in` until wait_sends().
void mesh_reduce_scatter(MeshPeers& peers, const std::vector<Block>& blocks, ReduceKernel kernel,
                         size_t elem, size_t segment, const uint8_t* in, uint8_t* out_block);
// The same with blocks of pieces: rank r's pieces, reduced, one after
// another in out_block (which must not overlap `in`).
void mesh_reduce_scatter(MeshPeers& peers, const std::vector<Pieces>& blocks, ReduceKernel kernel,
                         size_t elem, size_t segment, const uint8_t* in, uint8_t* out_block);
// Rank r's block of buf is in place; afterwards every block is.
void mesh_all_gather(MeshPeers& peers, const std::vector<Block>& blocks, size_t segment,
                     uint8_t* buf);
// out[count] = reduction of every rank's in[count]; in may equal out.
void mesh_all_reduce(MeshPeers& peers, ReduceKernel kernel, size_t elem, size_t count,
                     size_t segment, const uint8_t* in, uint8_t* out);
// buf[count] from root to everyone: root scatters one block to each rank,
// then every rank forwards its block to the others (root sends 2(N-1)/N of
// the buffer instead of N-1 copies).
void mesh_broadcast(MeshPeers& peers, int root, size_t elem, size_t count, size_t segment,
                    uint8_t* buf);

// out[count] = parts[0] op parts[1] op ... in that order (the small path;
// every rank holds every part, so every rank computes the same bits).
void reduce_in_rank_order(ReduceKernel kernel, const std::vector<const uint8_t*>& parts,
                          size_t count, size_t elem, uint8_t* out);

}  // namespace chorus::algo
