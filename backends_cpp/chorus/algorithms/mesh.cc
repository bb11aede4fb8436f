#include "chorus/algorithms/mesh.h"

#include <algorithm>
#include <cstring>

namespace chorus::algo {
namespace {

size_t round_segment(size_t segment, size_t elem) {
  const size_t seg = segment - segment % elem;
  return seg == 0 ? elem : seg;
}

size_t segments_in(size_t length, size_t seg) { return (length + seg - 1) / seg; }
size_t segment_length(size_t length, size_t seg, size_t j) {
  return std::min(seg, length - j * seg);
}

// Peers in the order r+1, r+2, ...: every rank starts with a different peer,
// so no rank's link is everybody's first.
int peer_at(int rank, int n, int i) { return (rank + 1 + i) % n; }

void send_block(MeshPeers& peers, int to, const Block& block, size_t seg, const uint8_t* base) {
  for (size_t j = 0; j < segments_in(block.length, seg); ++j) {
    peers.isend(to, base + block.offset + j * seg, segment_length(block.length, seg, j));
  }
}

void recv_block(MeshPeers& peers, int from, const Block& block, size_t seg, uint8_t* base) {
  for (size_t j = 0; j < segments_in(block.length, seg); ++j) {
    const size_t len = segment_length(block.length, seg, j);
    const auto bytes = peers.recv_exact(from, len);
    if (len > 0) std::memcpy(base + block.offset + j * seg, bytes.data(), len);
  }
}

}  // namespace

std::vector<Block> blocks_even(size_t count, size_t elem, int n) {
  std::vector<Block> out(n);
  const size_t q = count / n, rem = count % n;
  size_t at = 0;
  for (int b = 0; b < n; ++b) {
    const size_t c = q + (static_cast<size_t>(b) < rem ? 1 : 0);
    out[b] = {at * elem, c * elem};
    at += c;
  }
  return out;
}

std::vector<Block> blocks_fixed(size_t block_count, size_t elem, int n) {
  std::vector<Block> out(n);
  for (int b = 0; b < n; ++b)
    out[b] = {static_cast<size_t>(b) * block_count * elem, block_count * elem};
  return out;
}

void reduce_in_rank_order(ReduceKernel kernel, const std::vector<const uint8_t*>& parts,
                          size_t count, size_t elem, uint8_t* out) {
  if (count == 0 || parts.empty()) return;
  // out may be one of the parts (in place): start from parts[0] only if it is
  // not a later part we would overwrite first.
  for (size_t k = 1; k < parts.size(); ++k) {
    if (parts[k] == out && parts[0] != out) {
      std::vector<uint8_t> acc(parts[0], parts[0] + count * elem);
      for (size_t i = 1; i < parts.size(); ++i) kernel(acc.data(), acc.data(), parts[i], count);
      std::memcpy(out, acc.data(), count * elem);
      return;
    }
  }
  if (parts[0] != out) std::memcpy(out, parts[0], count * elem);
  for (size_t k = 1; k < parts.size(); ++k) kernel(out, out, parts[k], count);
}

void mesh_reduce_scatter(MeshPeers& peers, const std::vector<Block>& blocks, ReduceKernel kernel,
                         size_t elem, size_t segment, const uint8_t* in, uint8_t* out_block) {
  std::vector<Pieces> pieces;
  pieces.reserve(blocks.size());
  for (const Block& b : blocks) pieces.push_back({b});
  mesh_reduce_scatter(peers, pieces, kernel, elem, segment, in, out_block);
}

void mesh_reduce_scatter(MeshPeers& peers, const std::vector<Pieces>& blocks, ReduceKernel kernel,
                         size_t elem, size_t segment, const uint8_t* in, uint8_t* out_block) {
  const int n = peers.size(), r = peers.rank();
  const size_t seg = round_segment(segment, elem);
  for (int i = 0; i < n - 1; ++i) {
    const int to = peer_at(r, n, i);
    for (const Block& piece : blocks[to]) send_block(peers, to, piece, seg, in);
  }
  std::vector<std::vector<uint8_t>> frames(n);
  std::vector<const uint8_t*> parts(n);
  uint8_t* at = out_block;
  for (const Block& piece : blocks[r]) {
    for (size_t j = 0; j < segments_in(piece.length, seg); ++j) {
      const size_t len = segment_length(piece.length, seg, j);
      // Frames from every peer are read eagerly by the transport, so waiting
      // in rank order costs nothing but fixes the order of the additions.
      for (int k = 0; k < n; ++k) {
        if (k == r) {
          parts[k] = in + piece.offset + j * seg;
        } else {
          frames[k] = peers.recv_exact(k, len);
          parts[k] = frames[k].data();
        }
      }
      reduce_in_rank_order(kernel, parts, len / elem, elem, at);
      at += len;
    }
  }
}

void mesh_all_gather(MeshPeers& peers, const std::vector<Block>& blocks, size_t segment,
                     uint8_t* buf) {
  const int n = peers.size(), r = peers.rank();
  const size_t seg = std::max<size_t>(segment, 1);
  for (int i = 0; i < n - 1; ++i) send_block(peers, peer_at(r, n, i), blocks[r], seg, buf);
  for (int k = 0; k < n; ++k) {
    if (k != r) recv_block(peers, k, blocks[k], seg, buf);
  }
}

void mesh_all_reduce(MeshPeers& peers, ReduceKernel kernel, size_t elem, size_t count,
                     size_t segment, const uint8_t* in, uint8_t* out) {
  const int r = peers.rank();
  const auto blocks = blocks_even(count, elem, peers.size());
  mesh_reduce_scatter(peers, blocks, kernel, elem, segment, in, out + blocks[r].offset);
  // The all-gather writes blocks that reduce-scatter sends may still read
  // (in place): let those finish first.
  peers.wait_sends();
  mesh_all_gather(peers, blocks, round_segment(segment, elem), out);
}

void mesh_broadcast(MeshPeers& peers, int root, size_t elem, size_t count, size_t segment,
                    uint8_t* buf) {
  const int n = peers.size(), r = peers.rank();
  const size_t seg = round_segment(segment, elem);
  const auto blocks = blocks_even(count, elem, n);
  if (r == root) {
    for (int i = 0; i < n - 1; ++i) {
      const int to = peer_at(r, n, i);
      send_block(peers, to, blocks[to], seg, buf);
    }
    for (int i = 0; i < n - 1; ++i) send_block(peers, peer_at(r, n, i), blocks[root], seg, buf);
    return;
  }
  // Our block from the root, forwarded segment by segment to the other non-roots.
  const Block mine = blocks[r];
  for (size_t j = 0; j < segments_in(mine.length, seg); ++j) {
    const size_t len = segment_length(mine.length, seg, j);
    uint8_t* at = buf + mine.offset + j * seg;
    const auto bytes = peers.recv_exact(root, len);
    if (len > 0) std::memcpy(at, bytes.data(), len);
    for (int i = 0; i < n - 1; ++i) {
      const int to = peer_at(r, n, i);
      if (to != root) peers.isend(to, at, len);
    }
  }
  for (int k = 0; k < n; ++k) {
    if (k == r) continue;
    // The root's link carries our block first, then the root's own.
    recv_block(peers, k, blocks[k], seg, buf);
  }
}

}  // namespace chorus::algo
