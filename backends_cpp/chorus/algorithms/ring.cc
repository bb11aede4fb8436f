#include "chorus/algorithms/ring.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <utility>

namespace chorus::algo {
namespace {

int mod(long long a, int n) { return static_cast<int>(((a % n) + n) % n); }

// Lane 0 sends right and receives from the left; lane 1 the reverse.
constexpr Side kTo[2] = {Side::Right, Side::Left};
constexpr Side kFrom[2] = {Side::Left, Side::Right};
constexpr int kDir[2] = {+1, -1};

size_t round_segment(size_t segment, size_t elem) {
  const size_t seg = segment - segment % elem;
  return seg == 0 ? elem : seg;
}

size_t segments_in(size_t length, size_t seg) { return (length + seg - 1) / seg; }
size_t segment_length(size_t length, size_t seg, size_t j) {
  return std::min(seg, length - j * seg);
}

// Splits count elements into n blocks whose sizes differ by at most one.
std::vector<Range> split_blocks(size_t base, size_t count, size_t elem, int n) {
  std::vector<Range> out(n);
  const size_t q = count / n, rem = count % n;
  size_t at = 0;
  for (int b = 0; b < n; ++b) {
    const size_t c = q + (static_cast<size_t>(b) < rem ? 1 : 0);
    out[b] = {base + at * elem, c * elem};
    at += c;
  }
  return out;
}

}  // namespace

RingLayout layout_halves(size_t count, size_t elem, int n) {
  RingLayout layout;
  const size_t first = count / 2;
  layout.lane[0] = split_blocks(0, first, elem, n);
  layout.lane[1] = split_blocks(first * elem, count - first, elem, n);
  return layout;
}

RingLayout layout_blocks(size_t block_count, size_t elem, int n) {
  RingLayout layout;
  const size_t first = block_count / 2;
  for (int b = 0; b < n; ++b) {
    const size_t base = static_cast<size_t>(b) * block_count * elem;
    layout.lane[0].push_back({base, first * elem});
    layout.lane[1].push_back({base + first * elem, (block_count - first) * elem});
  }
  return layout;
}

namespace {

// Receives land in a window of this many segment slots per lane, each slot
// reused once its segment is reduced: the scratch is 2 * kWindow segments
// whatever the message size (the transport keeps later segments in the
// socket until their receive is posted: FrameLimits::hold_over).
constexpr size_t kWindow = 4;

// Reduce-scatter, either into `buf` (partial sums in place, forwarded from
// there) or, with buf null, through kWindow forward slots per lane (a slot is
// reused once its send is written) with block r going to `own`.
void reduce_scatter_impl(RingPair& pair, const RingLayout& layout, ReduceKernel kernel, size_t elem,
                         size_t segment, const uint8_t* in, uint8_t* buf, uint8_t* own,
                         std::vector<uint8_t>& scratch) {
  const int n = pair.size(), r = pair.rank();
  if (n < 2) return;
  const size_t seg = round_segment(segment, elem);
  // Step s: send block r - d(s+1), receive block r - d(s+2) and reduce it in;
  // the block received at step s is the one sent at step s+1, and the last
  // one received (s = n-2) is block r itself.
  auto send_block = [&](int lane, int s) { return mod(r - 1LL * kDir[lane] * (s + 1), n); };
  auto recv_block = [&](int lane, int s) { return mod(r - 1LL * kDir[lane] * (s + 2), n); };
  size_t biggest = 0;
  for (int lane = 0; lane < 2; ++lane)
    for (const Range& b : layout.lane[lane]) biggest = std::max(biggest, b.length);
  const size_t slot_bytes = std::min(seg, biggest);
  const size_t windows = buf != nullptr ? 2 : 4;  // receive (+ forward) windows
  if (scratch.size() < windows * kWindow * slot_bytes) {
    scratch.resize(windows * kWindow * slot_bytes);
  }
  // Per lane: the next segment to post (step, index), the posted ones in
  // arrival order (ticket, slot), and the forward slots with their sends.
  struct Window {
    uint8_t* slots = nullptr;
    int step = 0;
    size_t index = 0;
    size_t posted = 0;
    std::deque<std::pair<uint64_t, size_t>> tickets;
    uint8_t* forward = nullptr;
    size_t forwarded = 0;
    uint64_t sent[kWindow] = {};
    bool sending[kWindow] = {};
  };
  Window win[2];
  auto post_next = [&](int lane) {
    Window& w = win[lane];
    while (w.step <= n - 2 &&
           w.index >= segments_in(layout.lane[lane][recv_block(lane, w.step)].length, seg)) {
      ++w.step;
      w.index = 0;
    }
    if (w.step > n - 2) return;
    const Range blk = layout.lane[lane][recv_block(lane, w.step)];
    const size_t slot = w.posted++ % kWindow;
    w.tickets.emplace_back(pair.irecv(kFrom[lane], w.slots + slot * slot_bytes,
                                      segment_length(blk.length, seg, w.index)),
                           slot);
    ++w.index;
  };
  for (int lane = 0; lane < 2; ++lane) {
    uint8_t* base = scratch.data() + static_cast<size_t>(lane) * kWindow * slot_bytes;
    win[lane].slots = base;
    if (buf == nullptr) win[lane].forward = base + 2 * kWindow * slot_bytes;
    for (size_t k = 0; k < kWindow; ++k) post_next(lane);
  }
  for (int lane = 0; lane < 2; ++lane) {
    const Range blk = layout.lane[lane][send_block(lane, 0)];
    for (size_t j = 0; j < segments_in(blk.length, seg); ++j) {
      pair.isend(kTo[lane], in + blk.offset + j * seg, segment_length(blk.length, seg, j));
    }
  }
  const size_t own_base = layout.lane[0][r].offset;
  for (int s = 0; s <= n - 2; ++s) {
    const bool last = s == n - 2;
    const Range blk[2] = {layout.lane[0][recv_block(0, s)], layout.lane[1][recv_block(1, s)]};
    const size_t most = std::max(segments_in(blk[0].length, seg), segments_in(blk[1].length, seg));
    for (size_t j = 0; j < most; ++j) {
      for (int lane = 0; lane < 2; ++lane) {
        if (j >= segments_in(blk[lane].length, seg)) continue;
        Window& w = win[lane];
        const auto [ticket, slot] = w.tickets.front();
        w.tickets.pop_front();
        pair.wait_recv(kFrom[lane], ticket);
        const size_t len = segment_length(blk[lane].length, seg, j);
        // Each block is received once, so its own part is still pristine in `in`.
        const size_t at = blk[lane].offset + j * seg;
        uint8_t* dst;
        size_t fslot = 0;
        if (buf != nullptr) {
          dst = buf + at;
        } else if (last) {
          dst = own + (at - own_base);
        } else {
          fslot = w.forwarded++ % kWindow;
          if (w.sending[fslot]) pair.wait_send(kTo[lane], w.sent[fslot]);
          dst = w.forward + fslot * slot_bytes;
        }
        kernel(dst, in + at, w.slots + slot * slot_bytes, len / elem);
        post_next(lane);  // the receive slot is free again
        if (last) continue;
        const uint64_t sent = pair.isend(kTo[lane], dst, len);
        if (buf == nullptr) {
          w.sent[fslot] = sent;
          w.sending[fslot] = true;
        }
      }
    }
  }
}

}  // namespace

void ring_reduce_scatter(RingPair& pair, const RingLayout& layout, ReduceKernel kernel, size_t elem,
                         size_t segment, const uint8_t* in, uint8_t* buf,
                         std::vector<uint8_t>& scratch) {
  reduce_scatter_impl(pair, layout, kernel, elem, segment, in, buf, nullptr, scratch);
}

void ring_reduce_scatter_own(RingPair& pair, const RingLayout& layout, ReduceKernel kernel,
                             size_t elem, size_t segment, const uint8_t* in, uint8_t* own,
                             std::vector<uint8_t>& scratch) {
  reduce_scatter_impl(pair, layout, kernel, elem, segment, in, nullptr, own, scratch);
}

void ring_all_gather(RingPair& pair, const RingLayout& layout, size_t elem, size_t segment,
                     uint8_t* buf) {
  const int n = pair.size(), r = pair.rank();
  if (n < 2) return;
  const size_t seg = round_segment(segment, elem);
  // Step s: send block r - d s, receive block r - d(s+1) straight into place.
  auto send_block = [&](int lane, int s) { return mod(r - 1LL * kDir[lane] * s, n); };
  auto recv_block = [&](int lane, int s) { return mod(r - 1LL * kDir[lane] * (s + 1), n); };
  std::vector<std::vector<uint64_t>> tickets[2];
  for (int lane = 0; lane < 2; ++lane) {
    tickets[lane].resize(n - 1);
    for (int s = 0; s <= n - 2; ++s) {
      const Range blk = layout.lane[lane][recv_block(lane, s)];
      for (size_t j = 0; j < segments_in(blk.length, seg); ++j) {
        tickets[lane][s].push_back(pair.irecv(kFrom[lane], buf + blk.offset + j * seg,
                                              segment_length(blk.length, seg, j)));
      }
    }
    const Range own = layout.lane[lane][send_block(lane, 0)];
    for (size_t j = 0; j < segments_in(own.length, seg); ++j) {
      pair.isend(kTo[lane], buf + own.offset + j * seg, segment_length(own.length, seg, j));
    }
  }
  for (int s = 0; s <= n - 2; ++s) {
    const Range blk[2] = {layout.lane[0][recv_block(0, s)], layout.lane[1][recv_block(1, s)]};
    const size_t most = std::max(tickets[0][s].size(), tickets[1][s].size());
    for (size_t j = 0; j < most; ++j) {
      for (int lane = 0; lane < 2; ++lane) {
        if (j >= tickets[lane][s].size()) continue;
        pair.wait_recv(kFrom[lane], tickets[lane][s][j]);
        if (s + 1 <= n - 2) {
          pair.isend(kTo[lane], buf + blk[lane].offset + j * seg,
                     segment_length(blk[lane].length, seg, j));
        }
      }
    }
  }
}

void ring_all_reduce(RingPair& pair, ReduceKernel kernel, size_t elem, size_t count, size_t segment,
                     const uint8_t* in, uint8_t* buf, std::vector<uint8_t>& scratch) {
  const RingLayout layout = layout_halves(count, elem, pair.size());
  ring_reduce_scatter(pair, layout, kernel, elem, segment, in, buf, scratch);
  // All-gather receives overwrite blocks whose reduce-scatter sends may still
  // be queued: let those finish first.
  pair.wait_sends();
  ring_all_gather(pair, layout, elem, segment, buf);
}

void ring_broadcast(RingPair& pair, int root, size_t elem, size_t count, size_t segment,
                    uint8_t* buf) {
  const int n = pair.size(), r = pair.rank();
  const size_t seg = round_segment(segment, elem);
  const size_t first = count / 2;
  const Range half[2] = {{0, first * elem}, {first * elem, (count - first) * elem}};
  int pos[2];
  std::vector<uint64_t> tickets[2];
  for (int lane = 0; lane < 2; ++lane) {
    // Distance from the root along this lane's direction.
    pos[lane] = mod(1LL * kDir[lane] * (r - root), n);
    const size_t nseg = segments_in(half[lane].length, seg);
    for (size_t j = 0; j < nseg; ++j) {
      uint8_t* p = buf + half[lane].offset + j * seg;
      const size_t len = segment_length(half[lane].length, seg, j);
      if (pos[lane] == 0) {
        pair.isend(kTo[lane], p, len);
      } else {
        tickets[lane].push_back(pair.irecv(kFrom[lane], p, len));
      }
    }
  }
  const size_t most = std::max(tickets[0].size(), tickets[1].size());
  for (size_t j = 0; j < most; ++j) {
    for (int lane = 0; lane < 2; ++lane) {
      if (j >= tickets[lane].size()) continue;
      pair.wait_recv(kFrom[lane], tickets[lane][j]);
      if (pos[lane] < n - 1) {
        pair.isend(kTo[lane], buf + half[lane].offset + j * seg,
                   segment_length(half[lane].length, seg, j));
      }
    }
  }
}

std::vector<std::vector<uint8_t>> ring_gather_records(RingPair& pair, std::vector<uint8_t> mine) {
  const int n = pair.size(), r = pair.rank();
  std::vector<std::vector<uint8_t>> all(n);
  all[r] = std::move(mine);
  if (n < 2) return all;
  pair.isend_owned(Side::Right, all[r]);
  for (int s = 0; s <= n - 2; ++s) {
    const int from = mod(r - s - 1LL, n);
    all[from] = pair.recv_bytes(Side::Left);
    if (s < n - 2) pair.isend_owned(Side::Right, all[from]);
  }
  pair.wait_sends();
  return all;
}

}  // namespace chorus::algo
