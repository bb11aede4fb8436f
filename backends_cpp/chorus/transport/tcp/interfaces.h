// This host's IP networks (getifaddrs), and subnet arithmetic on IPv4 and
// IPv6 alike: what a split child needs to tell which of a peer's addresses it
// can reach without a router (a cable's /30 or /126, the management
// switch's /24 or /64).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace chorus::tcp {

// An IPv4 or IPv6 address as 16 bytes in network order: IPv4 as the mapped
// ::ffff:a.b.c.d, so one comparison serves both families and an IPv4
// address never lies in an IPv6 network.
struct IpAddress {
  std::array<uint8_t, 16> bytes{};

  bool is_v4() const;
  bool operator==(const IpAddress& other) const { return bytes == other.bytes; }
};

// One interface address with its prefix as the family counts it: 10.0.0.1/30,
// fd00:c::1/126.
struct IpNet {
  IpAddress address;
  uint8_t prefix = 32;

  // Whether `other` lies in this network (never across families).
  bool contains(const IpAddress& other) const;
  // The prefix in bits of the 16-byte form (IPv4's /30 is /126): comparable
  // across families, the larger the narrower.
  int width() const;
  // "10.0.0.1/30", "fd00:c::1/126".
  std::string text() const;
};

// The addresses of this host's interfaces that are up, IPv4 and IPv6, except
// loopback (it names a different machine on every host) and IPv6 link-local
// ones (fe80::/10: dialing them needs the dialer's interface, which a peer's
// report cannot give).
std::vector<IpNet> local_networks();

// "10.0.0.1" or "fd00::1" (no brackets, no scope) -> the address; nullopt
// for anything else.
std::optional<IpAddress> parse_ip(const std::string& host);
// "10.0.0.1", "fd00::1".
std::string ip_text(const IpAddress& address);
// "10.0.0.1:5000", "[fd00::1]:5000": what Address::parse reads.
std::string endpoint_text(const IpAddress& address, uint16_t port);
// 127.0.0.0/8 or ::1.
bool is_loopback(const IpAddress& address);

}  // namespace chorus::tcp
