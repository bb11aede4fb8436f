// Which ranks of a group share a host, and how a hierarchical group lays its
// sub-groups over them.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace chorus::hier {

struct HostLayout {
  // Hosts numbered by their lowest rank; each host's ranks ascending.
  std::vector<std::vector<int>> hosts;
  std::vector<int> host_of;      // rank -> host
  std::vector<int> local_index;  // rank -> its index among its host's ranks
  // Cross groups: group j joins the j-th rank of every host, for j below
  // the fewest ranks any host has, so that each spans every host.
  int cross_groups = 0;
  size_t fullest = 0;  // ranks on the host with the most

  // Whether a hierarchical group is worth it: several hosts, and some host
  // with several ranks.
  bool mixed() const;
};

// The layout of ranks whose host keys (equal on ranks of one host) are `keys`.
HostLayout layout_hosts(const std::vector<std::string>& keys);

// Block j of n blocks over `total` units: [total * j / n, total * (j + 1) / n).
inline size_t block_begin(size_t total, int j, int n) {
  return total * static_cast<size_t>(j) / static_cast<size_t>(n);
}

}  // namespace chorus::hier
