// What the TCP backends (ring, mesh) share in setting up and re-establishing
// links: their Acceptor's settings, the connections it accepted waiting by
// epoch until every stream of a link arrived, and the probe that tells a dead
// peer (its listener refuses connections) from a slow one.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "chorus/backends/tcp/group_config.h"
#include "chorus/transport/tcp/handshake.h"
#include "chorus/transport/tcp/socket.h"

namespace chorus {

// The Acceptor settings both backends share: this rank, its streams (one per
// listen address), the set-up deadline, verbosity, and "[chorus ring] rank 1
// (group /0.1)" for its log lines. Who may connect (expected_rank,
// expected_ranks) is the backend's to set.
tcp::AcceptorConfig acceptor_config(const TcpGroupConfig& config, const tcp::HandshakeId& id,
                                    const std::string& backend);

// Connections accepted from one peer, by epoch, one slot per stream.
using StagedLinks = std::map<uint64_t, std::vector<std::optional<tcp::Socket>>>;

// Files an accepted connection in its epoch's slot (`streams` per link).
void stage(StagedLinks& staged, tcp::Accepted& accepted, size_t streams);

// The newest epoch whose every stream arrived, with its sockets moved out
// (the caller erases the entries up to it once the link is installed).
struct CompleteLink {
  uint64_t epoch = 0;
  std::vector<tcp::Socket> sockets;
};
std::optional<CompleteLink> newest_complete(StagedLinks& staged);

// Whether the listener at `address` ("ip:port") refuses a connection within
// `patience`: a dead process's listener does, a slow one's accepts (other
// errors and timeouts prove nothing and count as no).
bool listener_refuses(const std::string& address, std::chrono::milliseconds patience);

}  // namespace chorus
