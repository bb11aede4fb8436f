// Which address each member of a split child dials (backends/tcp/reach.h):
// the parent's addresses where they work, a shared network where they do
// not, and a named pair where the two share none.
#include "chorus/backends/tcp/reach.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace chorus::tcp_split {
namespace {

tcp::IpNet net(const std::string& ip, uint8_t prefix) {
  return tcp::IpNet{*tcp::parse_ip(ip), prefix};
}

tcp::IpAddress ip(const std::string& text) { return *tcp::parse_ip(text); }

// Host h of 4 on a ring of cables h0-h1-h2-h3-h0 beside a management
// switch, listed (as `chorus config` writes a ring) at its address on the
// cable to its left neighbour. IPv4: cables 10.0.<cable>.1 or .2 / 30, the
// switch 192.168.7.<10+h>/24. IPv6 (v6): cables fd00:c:0:<cable>::1 or ::2
// / 126, the switch fd00:aa::<10+h>/64.
Endpoint ring_host(int h, bool v6 = false) {
  const int left_cable = (h + 3) % 4;  // cable c joins hc and h(c+1)
  const int right_cable = h;
  auto cable = [&](int c, int end) {
    const std::string k = std::to_string(c), e = std::to_string(end);
    return v6 ? "fd00:c:0:" + k + "::" + e : "10.0." + k + "." + e;
  };
  const uint8_t cable_prefix = v6 ? 126 : 30;
  const std::string port = std::to_string(5000 + h);
  Endpoint e;
  e.listed = {v6 ? "[" + cable(left_cable, 2) + "]:" + port : cable(left_cable, 2) + ":" + port};
  e.nets = {net(cable(left_cable, 2), cable_prefix), net(cable(right_cable, 1), cable_prefix),
            v6 ? net("fd00:aa::" + std::to_string(10 + h), 64)
               : net("192.168.7." + std::to_string(10 + h), 24)};
  (v6 ? e.any_port6 : e.any_port) = static_cast<uint16_t>((v6 ? 7000 : 6000) + h);
  e.hostname = "h" + std::to_string(h);
  e.parent_rank = h;
  return e;
}

std::vector<Endpoint> members_of(const std::vector<int>& hosts) {
  std::vector<Endpoint> out;
  for (int h : hosts) out.push_back(ring_host(h));
  return out;
}

TEST(SplitReach, ParentAddressesAreKeptWhereEveryPairCanUseThem) {
  // One host: loopback addresses, three streams each (striping kept).
  std::vector<Endpoint> members(3);
  for (int r = 0; r < 3; ++r) {
    for (int s = 0; s < 3; ++s) {
      members[r].listed.push_back("127.0.0.1:" + std::to_string(7000 + 10 * r + s));
    }
  }
  const Reach reach = plan_reach(members, 1, [](int, int) { return false; });
  EXPECT_FALSE(reach.per_pair);
  for (int r = 0; r < 3; ++r) EXPECT_EQ(reach.hosts[r], members[r].listed);
  for (const auto& why : reach.unrouted) EXPECT_EQ(why, "");
}

TEST(SplitReach, NeighboursUseTheirCableBothWays) {
  // h0 and h1 as a child: h1 dials h0's listed address (on the h3-h0 cable)
  // in the parent never; it must use the h0-h1 cable instead.
  const auto members = members_of({0, 1});
  const auto proven = [](int a, int b) { return b == a + 1; };  // the parent ring's h0 -> h1
  const Reach at0 = plan_reach(members, 0, proven);
  const Reach at1 = plan_reach(members, 1, proven);
  ASSERT_TRUE(at0.per_pair);
  ASSERT_TRUE(at1.per_pair);
  EXPECT_EQ(at0.hosts[1], std::vector<std::string>{"10.0.0.2:5001"});  // h1's listed: our cable
  EXPECT_EQ(at1.hosts[0], std::vector<std::string>{"10.0.0.1:6000"});  // h0 on our cable
  EXPECT_EQ(at0.unrouted[1], "");
  EXPECT_EQ(at1.unrouted[0], "");
  // One socket per pair on both sides, so the acceptor expects what the dialer opens.
  EXPECT_EQ(at0.hosts[0].size(), 1U);
  EXPECT_EQ(at1.hosts[1].size(), 1U);
}

TEST(SplitReach, NonNeighboursUseTheSwitch) {
  const auto members = members_of({0, 2});
  const Reach at0 = plan_reach(members, 0, [](int, int) { return false; });
  const Reach at1 = plan_reach(members, 1, [](int, int) { return false; });
  EXPECT_EQ(at0.hosts[1], std::vector<std::string>{"192.168.7.12:6002"});
  EXPECT_EQ(at1.hosts[0], std::vector<std::string>{"192.168.7.10:6000"});
}

TEST(SplitReach, PairsWithNoCommonNetworkAreNamedOnBothSides) {
  auto members = members_of({0, 2});
  for (auto& m : members) m.nets.pop_back();  // no management switch: cables only
  const Reach at0 = plan_reach(members, 0, [](int, int) { return false; });
  const Reach at1 = plan_reach(members, 1, [](int, int) { return false; });
  EXPECT_EQ(at0.hosts[1], members[1].listed);  // a route may still exist
  ASSERT_NE(at0.unrouted[1], "");
  EXPECT_EQ(at0.unrouted[1], at1.unrouted[0]);  // the same text on both sides
  EXPECT_NE(at0.unrouted[1].find(
                "rank 0 (h0, parent rank 0) and rank 1 (h2, parent rank 2) share no network"),
            std::string::npos)
      << at0.unrouted[1];
  EXPECT_NE(at0.unrouted[1].find("h2: 10.0.1.2/30, 10.0.2.1/30"), std::string::npos)
      << at0.unrouted[1];
}

TEST(SplitReach, APairProvenByTheParentKeepsItsAddressEvenWithoutASharedNetwork) {
  // Hosts on different routed subnets: the parent reached each other's addresses.
  std::vector<Endpoint> members(2);
  members[0].listed = {"10.1.0.5:4000"};
  members[0].nets = {net("10.1.0.5", 24)};
  members[1].listed = {"10.2.0.7:4001"};
  members[1].nets = {net("10.2.0.7", 24)};
  const Reach reach = plan_reach(members, 0, [](int, int) { return true; });
  EXPECT_FALSE(reach.per_pair);
  EXPECT_EQ(reach.hosts[1], members[1].listed);
  EXPECT_EQ(reach.unrouted[1], "");
}

TEST(SplitReach, NetworksContainTheirAddressesOnly) {
  const tcp::IpNet cable = net("10.0.3.1", 30);
  EXPECT_TRUE(cable.contains(ip("10.0.3.2")));
  EXPECT_FALSE(cable.contains(ip("10.0.3.5")));
  EXPECT_EQ(cable.text(), "10.0.3.1/30");
  EXPECT_TRUE(net("0.0.0.0", 0).contains(ip("8.8.8.8")));
  // IPv6: a /126 cable, a /64 switch; never across families, even at /0.
  const tcp::IpNet cable6 = net("fd00:c:0:3::1", 126);
  EXPECT_TRUE(cable6.contains(ip("fd00:c:0:3::2")));
  EXPECT_FALSE(cable6.contains(ip("fd00:c:0:3::5")));
  EXPECT_EQ(cable6.text(), "fd00:c:0:3::1/126");
  EXPECT_TRUE(net("fd00:aa::7", 64).contains(ip("fd00:aa::ffff:1")));
  EXPECT_FALSE(net("fd00:aa::7", 64).contains(ip("fd00:ab::7")));
  EXPECT_FALSE(net("0.0.0.0", 0).contains(ip("::1")));
  EXPECT_FALSE(net("::", 0).contains(ip("8.8.8.8")));
  EXPECT_TRUE(net("::", 0).contains(ip("2001:db8::1")));
  // Widths compare across families: an IPv4 /30 is narrower than an IPv6 /64.
  EXPECT_GT(net("10.0.3.1", 30).width(), net("fd00:aa::7", 64).width());
  EXPECT_GT(cable6.width(), net("10.0.3.1", 24).width());
  EXPECT_TRUE(tcp::is_loopback(ip("::1")));
  EXPECT_TRUE(tcp::is_loopback(ip("127.0.0.2")));
  EXPECT_FALSE(tcp::is_loopback(ip("::2")));
  EXPECT_FALSE(tcp::parse_ip("fe80::1%eth0").has_value());  // scoped: not a bare address
  EXPECT_FALSE(tcp::parse_ip("h0").has_value());
  EXPECT_EQ(tcp::endpoint_text(ip("fd00::1"), 5000), "[fd00::1]:5000");
  EXPECT_EQ(tcp::endpoint_text(ip("10.0.0.1"), 5000), "10.0.0.1:5000");
}

TEST(SplitReach, Ipv6NeighboursUseTheirCableAndTheOthersTheSwitch) {
  const auto proven = [](int a, int b) { return b == a + 1; };
  const std::vector<Endpoint> pair = {ring_host(0, true), ring_host(1, true)};
  const Reach at0 = plan_reach(pair, 0, proven);
  const Reach at1 = plan_reach(pair, 1, proven);
  ASSERT_TRUE(at1.per_pair);
  EXPECT_EQ(at0.hosts[1], std::vector<std::string>{"[fd00:c:0:0::2]:5001"});  // listed, on-link
  EXPECT_EQ(at1.hosts[0], std::vector<std::string>{"[fd00:c::1]:7000"});      // h0 on our cable
  EXPECT_EQ(at1.unrouted[0], "");
  const std::vector<Endpoint> apart = {ring_host(0, true), ring_host(2, true)};
  const Reach far = plan_reach(apart, 0, [](int, int) { return false; });
  EXPECT_EQ(far.hosts[1], std::vector<std::string>{"[fd00:aa::12]:7002"});
  EXPECT_EQ(far.unrouted[1], "");
}

TEST(SplitReach, MixedFamiliesUseTheNarrowestSharedNetworkWithAListener) {
  // Listed on IPv6 cables, the switch IPv4 only: non-neighbours meet on the
  // IPv4 switch; a host without an IPv6 listener is never dialed over IPv6.
  auto h0 = ring_host(0, true), h1 = ring_host(1, true), h2 = ring_host(2, true);
  for (Endpoint* e : {&h0, &h1, &h2}) {
    e->nets.back() = net("192.168.7." + std::to_string(10 + e->parent_rank), 24);
    e->any_port = static_cast<uint16_t>(6000 + e->parent_rank);
  }
  const Reach far = plan_reach({h0, h2}, 0, [](int, int) { return false; });
  EXPECT_EQ(far.hosts[1], std::vector<std::string>{"192.168.7.12:6002"});
  h0.any_port6 = 0;
  const Reach near = plan_reach({h0, h1}, 1, [](int, int) { return false; });
  EXPECT_EQ(near.hosts[0], std::vector<std::string>{"192.168.7.10:6000"});  // not the v6 cable
}

}  // namespace
}  // namespace chorus::tcp_split
