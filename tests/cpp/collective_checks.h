// Every collective of a group checked against a scalar reference, shared by
// the TCP backend tests (ring, mesh). Values are small integers, so sums are
// exact in every dtype used and results must match bit for bit.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "chorus/backends/group_impl.h"
#include "chorus/ops.h"

namespace chorus::test_support {

inline CallDesc make_desc(Collective kind, ReduceOp op, Dtype dtype, uint64_t count, int root = 0) {
  CallDesc d;
  d.kind = kind;
  d.op = op;
  d.dtype = dtype;
  d.count = count;
  d.shape_hash = count * 31 + 7;
  d.root = root;
  return d;
}

template <typename T>
T value(int rank, size_t i) {
  return static_cast<T>(static_cast<int>((rank * 7 + i * 3) % 23) - 11);
}

template <typename T>
T combine(ReduceOp op, T a, T b) {
  switch (op) {
    case ReduceOp::Sum: return static_cast<T>(a + b);
    case ReduceOp::Max: return std::max(a, b);
    case ReduceOp::Min: return std::min(a, b);
  }
  return a;
}

// all_reduce (every op, out of place and in place), all_gather,
// reduce_scatter, broadcast from every root, then a barrier.
template <typename T>
void check_collectives(int rank, int n, GroupImpl& g, Dtype dtype, size_t count) {
  std::vector<T> in(count);
  for (size_t i = 0; i < count; ++i) in[i] = value<T>(rank, i);
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
    std::vector<T> out(count, T(99));
    ops::all_reduce(g, make_desc(Collective::AllReduce, op, dtype, count), in.data(), out.data());
    for (size_t i = 0; i < count; ++i) {
      T want = value<T>(0, i);
      for (int r = 1; r < n; ++r) want = combine(op, want, value<T>(r, i));
      ASSERT_EQ(out[i], want) << "all_reduce op " << int(op) << " count " << count << " i " << i;
    }
  }
  std::vector<T> buf = in;  // in place
  ops::all_reduce(g, make_desc(Collective::AllReduce, ReduceOp::Sum, dtype, count), buf.data(),
                  buf.data());
  for (size_t i = 0; i < count; ++i) {
    T want = 0;
    for (int r = 0; r < n; ++r) want = static_cast<T>(want + value<T>(r, i));
    ASSERT_EQ(buf[i], want);
  }
  std::vector<T> gathered(count * n, T(99));
  ops::all_gather(g, make_desc(Collective::AllGather, ReduceOp::Sum, dtype, count), in.data(),
                  gathered.data());
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < count; ++i) ASSERT_EQ(gathered[r * count + i], value<T>(r, i));
  }
  const size_t total = count * n;
  std::vector<T> big(total), mine(count, T(99));
  for (size_t i = 0; i < total; ++i) big[i] = value<T>(rank, i);
  ops::reduce_scatter(g, make_desc(Collective::ReduceScatter, ReduceOp::Sum, dtype, total),
                      big.data(), mine.data());
  for (size_t i = 0; i < count; ++i) {
    T want = 0;
    for (int r = 0; r < n; ++r) want = static_cast<T>(want + value<T>(r, rank * count + i));
    ASSERT_EQ(mine[i], want) << "reduce_scatter count " << count;
  }
  for (int root = 0; root < n; ++root) {
    std::vector<T> b(count);
    for (size_t i = 0; i < count; ++i) b[i] = rank == root ? value<T>(root + 5, i) : T(99);
    ops::broadcast(g, make_desc(Collective::Broadcast, ReduceOp::Sum, dtype, count, root),
                   b.data());
    for (size_t i = 0; i < count; ++i) ASSERT_EQ(b[i], value<T>(root + 5, i)) << "root " << root;
  }
  ops::barrier(g);
}

// check_collectives over counts from empty to a few segments, in four dtypes.
inline void check_collectives_sweep(int rank, int n, GroupImpl& g) {
  for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{13}, size_t{1000},
                       static_cast<size_t>(n) * 37 + 1}) {
    check_collectives<float>(rank, n, g, Dtype::Float32, count);
    check_collectives<int64_t>(rank, n, g, Dtype::Int64, count);
    check_collectives<double>(rank, n, g, Dtype::Float64, count);
    check_collectives<int8_t>(rank, n, g, Dtype::Int8, count);
  }
}

}  // namespace chorus::test_support
