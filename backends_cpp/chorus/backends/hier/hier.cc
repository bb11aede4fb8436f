#include "chorus/backends/hier/hier.h"

#include <array>
#include <cstring>

#include "chorus/backends/hier/hier_group.h"
#include "chorus/backends/mesh/mesh.h"
#include "chorus/transport/tcp/socket.h"

namespace chorus::hier {
namespace {

constexpr size_t kFieldBytes = 64;

// Every rank's host key (the address it is listed or listens at: ranks of
// one host share it) and how messages name it (its first address, as the
// TCP backends name ranks).
void gather_hosts(mesh::MeshGroup& world, const InitOptions& options,
                  std::vector<std::string>& keys, std::vector<std::string>& names) {
  std::string name;
  if (!options.hosts.empty() && !options.hosts[options.rank].empty()) {
    name = options.hosts[options.rank].front();
  } else if (!world.listen_addresses().empty()) {
    name = world.listen_addresses().front();
  }
  std::string key = tcp::host_of(name);
  if (key.empty() || key == "0.0.0.0" || key == "::") key = options.hostname;
  if (name.empty()) name = options.hostname;
  std::array<char, 2 * kFieldBytes> mine{};
  std::memcpy(mine.data(), key.data(), std::min(key.size(), kFieldBytes - 1));
  std::memcpy(mine.data() + kFieldBytes, name.data(), std::min(name.size(), kFieldBytes - 1));
  std::vector<char> all(mine.size() * static_cast<size_t>(options.size));
  CallDesc desc;
  desc.kind = Collective::AllGather;
  desc.dtype = Dtype::UInt8;
  desc.count = mine.size();
  world.all_gather(desc, mine.data(), all.data());
  for (int r = 0; r < options.size; ++r) {
    const char* rec = all.data() + static_cast<size_t>(r) * mine.size();
    keys.emplace_back(rec, strnlen(rec, kFieldBytes));
    names.emplace_back(rec + kFieldBytes, strnlen(rec + kFieldBytes, kFieldBytes));
  }
}

}  // namespace

bool is_available() { return mesh::is_available(); }

GroupPtr init(const InitOptions& options) {
  if (options.size == 1) return make_single_group("hier");
  auto world = std::dynamic_pointer_cast<mesh::MeshGroup>(mesh::init(options));
  std::vector<std::string> keys, names;
  gather_hosts(*world, options, keys, names);
  const HostLayout layout = layout_hosts(keys);
  const int host = layout.host_of[options.rank];
  std::shared_ptr<shm::ShmGroup> local;
  if (layout.hosts[host].size() > 1) {
    InitOptions here = options;
    here.rank = layout.local_index[options.rank];
    here.size = static_cast<int>(layout.hosts[host].size());
    here.hosts.clear();
    here.listen_fds.clear();
    local = std::make_shared<shm::ShmGroup>(here, "hier" + std::to_string(host));
  }
  return std::make_shared<HierGroup>(options, std::move(world), std::move(local), std::move(keys),
                                     std::move(names));
}

}  // namespace chorus::hier
