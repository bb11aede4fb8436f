// This host's IPv4 networks (getifaddrs), and IPv4 subnet arithmetic: what a
// split child needs to tell which of a peer's addresses it can reach without
// a router (a cable's /30, the management switch's /24).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace chorus::tcp {

// One interface address with its prefix: 10.0.0.1/30. `address` is in host
// byte order.
struct Ipv4Net {
  uint32_t address = 0;
  uint8_t prefix = 32;

  // Whether `other` (host byte order) lies in this network.
  bool contains(uint32_t other) const;
  // "10.0.0.1/30".
  std::string text() const;
};

// The IPv4 addresses of this host's interfaces that are up, loopback excluded
// (a loopback address names a different machine on every host).
std::vector<Ipv4Net> local_ipv4_networks();

// "10.0.0.1" -> its address in host byte order; nullopt for anything else.
std::optional<uint32_t> parse_ipv4(const std::string& host);
std::string ipv4_text(uint32_t address);
bool is_loopback(uint32_t address);

}  // namespace chorus::tcp
