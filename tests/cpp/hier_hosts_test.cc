// How a hierarchical group lays itself over hosts (backends/hier/hosts.h):
// hosts in order of their lowest rank, each rank's index on its host, and
// cross groups only as many as the fewest ranks a host has.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "chorus/backends/hier/hosts.h"

namespace chorus::hier {
namespace {

TEST(HierHosts, PackedHostsInRankOrder) {
  const HostLayout l = layout_hosts({"a", "a", "b", "b", "b"});
  EXPECT_EQ(l.hosts, (std::vector<std::vector<int>>{{0, 1}, {2, 3, 4}}));
  EXPECT_EQ(l.host_of, (std::vector<int>{0, 0, 1, 1, 1}));
  EXPECT_EQ(l.local_index, (std::vector<int>{0, 1, 0, 1, 2}));
  EXPECT_EQ(l.cross_groups, 2);  // rank 4 joins none
  EXPECT_EQ(l.fullest, 3u);
  EXPECT_TRUE(l.mixed());
}

TEST(HierHosts, InterleavedRanksKeepTheirHosts) {
  const HostLayout l = layout_hosts({"b", "a", "b", "a"});
  EXPECT_EQ(l.hosts, (std::vector<std::vector<int>>{{0, 2}, {1, 3}}));
  EXPECT_EQ(l.local_index, (std::vector<int>{0, 0, 1, 1}));
  EXPECT_EQ(l.cross_groups, 2);
}

TEST(HierHosts, OneRankAloneMeansOneCrossGroup) {
  const HostLayout l = layout_hosts({"a", "b", "b", "c", "c", "c"});
  EXPECT_EQ(l.cross_groups, 1);
  EXPECT_EQ(l.fullest, 3u);
  EXPECT_TRUE(l.mixed());
}

TEST(HierHosts, OneHostOrOneRankPerHostIsNotMixed) {
  EXPECT_FALSE(layout_hosts({"a", "a", "a"}).mixed());
  EXPECT_FALSE(layout_hosts({"a", "b", "c"}).mixed());
  EXPECT_EQ(layout_hosts({"a", "b", "c"}).cross_groups, 1);
}

TEST(HierHosts, BlocksCoverEveryUnitOnce) {
  for (size_t total : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
    for (int n : {1, 2, 3}) {
      size_t covered = 0;
      for (int j = 0; j < n; ++j) {
        EXPECT_EQ(block_begin(total, j, n), covered);
        covered = block_begin(total, j + 1, n);
      }
      EXPECT_EQ(covered, total);
    }
  }
}

}  // namespace
}  // namespace chorus::hier
