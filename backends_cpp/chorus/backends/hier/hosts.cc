#include "chorus/backends/hier/hosts.h"

#include <algorithm>
#include <map>

namespace chorus::hier {

bool HostLayout::mixed() const {
  if (hosts.size() < 2) return false;
  return std::any_of(hosts.begin(), hosts.end(), [](const auto& h) { return h.size() > 1; });
}

HostLayout layout_hosts(const std::vector<std::string>& keys) {
  HostLayout layout;
  const int n = static_cast<int>(keys.size());
  layout.host_of.resize(n);
  layout.local_index.resize(n);
  std::map<std::string, int> index;
  for (int r = 0; r < n; ++r) {
    auto [it, fresh] = index.emplace(keys[r], static_cast<int>(layout.hosts.size()));
    if (fresh) layout.hosts.emplace_back();
    auto& members = layout.hosts[it->second];
    layout.host_of[r] = it->second;
    layout.local_index[r] = static_cast<int>(members.size());
    members.push_back(r);
  }
  layout.cross_groups = n == 0 ? 0 : n;
  for (const auto& h : layout.hosts) {
    layout.cross_groups = std::min(layout.cross_groups, static_cast<int>(h.size()));
    layout.fullest = std::max(layout.fullest, h.size());
  }
  return layout;
}

}  // namespace chorus::hier
