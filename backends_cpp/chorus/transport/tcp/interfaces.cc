#include "chorus/transport/tcp/interfaces.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <cstring>

namespace chorus::tcp {
namespace {

constexpr std::array<uint8_t, 12> kV4Mapped = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

IpAddress from_v4(const in_addr& a) {
  IpAddress out;
  std::memcpy(out.bytes.data(), kV4Mapped.data(), kV4Mapped.size());
  std::memcpy(out.bytes.data() + 12, &a, 4);
  return out;
}

IpAddress from_v6(const in6_addr& a) {
  IpAddress out;
  std::memcpy(out.bytes.data(), &a, 16);
  return out;
}

// Set bits of a netmask (IPv4 or IPv6).
uint8_t mask_bits(const sockaddr* mask) {
  if (mask == nullptr) return 0;
  const uint8_t* p = nullptr;
  size_t n = 0;
  if (mask->sa_family == AF_INET) {
    p = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(mask)->sin_addr);
    n = 4;
  } else if (mask->sa_family == AF_INET6) {
    p = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in6*>(mask)->sin6_addr);
    n = 16;
  }
  int bits = 0;
  for (size_t i = 0; i < n; ++i) bits += __builtin_popcount(p[i]);
  return static_cast<uint8_t>(bits);
}

bool is_link_local_v6(const IpAddress& a) {
  return !a.is_v4() && a.bytes[0] == 0xfe && (a.bytes[1] & 0xc0) == 0x80;
}

}  // namespace

bool IpAddress::is_v4() const { return std::memcmp(bytes.data(), kV4Mapped.data(), 12) == 0; }

int IpNet::width() const { return address.is_v4() ? 96 + prefix : prefix; }

bool IpNet::contains(const IpAddress& other) const {
  if (address.is_v4() != other.is_v4()) return false;
  int bits = width();
  for (size_t i = 0; i < 16 && bits > 0; ++i, bits -= 8) {
    const uint8_t mask = bits >= 8 ? 0xff : static_cast<uint8_t>(0xff << (8 - bits));
    if (((address.bytes[i] ^ other.bytes[i]) & mask) != 0) return false;
  }
  return true;
}

std::string IpNet::text() const { return ip_text(address) + "/" + std::to_string(prefix); }

std::vector<IpNet> local_networks() {
  std::vector<IpNet> nets;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return nets;  // none known: the parent's addresses are used
  for (const ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr) continue;
    if ((i->ifa_flags & IFF_UP) == 0 || (i->ifa_flags & IFF_LOOPBACK) != 0) continue;
    IpNet net;
    if (i->ifa_addr->sa_family == AF_INET) {
      net.address = from_v4(reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr);
    } else if (i->ifa_addr->sa_family == AF_INET6) {
      net.address = from_v6(reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr);
      if (is_link_local_v6(net.address) || is_loopback(net.address)) continue;
    } else {
      continue;
    }
    net.prefix = mask_bits(i->ifa_netmask);
    nets.push_back(net);
  }
  freeifaddrs(list);
  return nets;
}

std::optional<IpAddress> parse_ip(const std::string& host) {
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return from_v4(v4);
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) return from_v6(v6);
  return std::nullopt;
}

std::string ip_text(const IpAddress& address) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (address.is_v4()) {
    in_addr a{};
    std::memcpy(&a, address.bytes.data() + 12, 4);
    inet_ntop(AF_INET, &a, buf, sizeof buf);
  } else {
    in6_addr a{};
    std::memcpy(&a, address.bytes.data(), 16);
    inet_ntop(AF_INET6, &a, buf, sizeof buf);
  }
  return buf;
}

std::string endpoint_text(const IpAddress& address, uint16_t port) {
  const std::string host = ip_text(address);
  return (address.is_v4() ? host : "[" + host + "]") + ":" + std::to_string(port);
}

bool is_loopback(const IpAddress& address) {
  if (address.is_v4()) return address.bytes[12] == 127;
  static const IpAddress kLoopback6 = from_v6(in6addr_loopback);
  return address == kLoopback6;
}

}  // namespace chorus::tcp
