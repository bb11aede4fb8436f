#include "chorus/transport/tcp/interfaces.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

namespace chorus::tcp {
namespace {

uint32_t mask_of(uint8_t prefix) { return prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix); }

}  // namespace

bool Ipv4Net::contains(uint32_t other) const { return ((address ^ other) & mask_of(prefix)) == 0; }

std::string Ipv4Net::text() const { return ipv4_text(address) + "/" + std::to_string(prefix); }

std::vector<Ipv4Net> local_ipv4_networks() {
  std::vector<Ipv4Net> nets;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return nets;  // none known: the parent's addresses are used
  for (const ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    if ((i->ifa_flags & IFF_UP) == 0 || (i->ifa_flags & IFF_LOOPBACK) != 0) continue;
    Ipv4Net net;
    net.address = ntohl(reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr);
    if (i->ifa_netmask != nullptr) {
      const uint32_t mask =
          ntohl(reinterpret_cast<const sockaddr_in*>(i->ifa_netmask)->sin_addr.s_addr);
      net.prefix = static_cast<uint8_t>(__builtin_popcount(mask));
    }
    nets.push_back(net);
  }
  freeifaddrs(list);
  return nets;
}

std::optional<uint32_t> parse_ipv4(const std::string& host) {
  in_addr parsed{};
  if (inet_pton(AF_INET, host.c_str(), &parsed) != 1) return std::nullopt;
  return ntohl(parsed.s_addr);
}

std::string ipv4_text(uint32_t address) {
  in_addr a{htonl(address)};
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &a, buf, sizeof buf);
  return buf;
}

bool is_loopback(uint32_t address) { return (address >> 24) == 127; }

}  // namespace chorus::tcp
