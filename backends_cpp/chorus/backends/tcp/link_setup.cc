#include "chorus/backends/tcp/link_setup.h"

#include <cerrno>

#include "chorus/common/error.h"

namespace chorus {

tcp::AcceptorConfig acceptor_config(const TcpGroupConfig& config, const tcp::HandshakeId& id,
                                    const std::string& backend) {
  tcp::AcceptorConfig ac;
  ac.id = id;
  ac.my_rank = config.rank;
  ac.streams = static_cast<uint32_t>(config.hosts[config.rank].size());
  ac.timeout_s = config.timeout_s;
  ac.verbose = config.verbose;
  ac.log_prefix = "[chorus " + backend + "] rank " + std::to_string(config.rank) +
                  (config.group_path.empty() ? "" : " (group " + config.group_path + ")");
  return ac;
}

void stage(StagedLinks& staged, tcp::Accepted& accepted, size_t streams) {
  auto& slots = staged[accepted.epoch];
  slots.resize(streams);
  slots[accepted.stream] = std::move(accepted.socket);
}

std::optional<CompleteLink> newest_complete(StagedLinks& staged) {
  for (auto it = staged.rbegin(); it != staged.rend(); ++it) {
    bool complete = true;
    for (const auto& s : it->second) complete = complete && s.has_value();
    if (!complete) continue;
    CompleteLink link;
    link.epoch = it->first;
    for (auto& s : it->second) link.sockets.push_back(std::move(*s));
    return link;
  }
  return std::nullopt;
}

bool listener_refuses(const std::string& address, std::chrono::milliseconds patience) {
  const auto parsed = tcp::Address::parse(address);
  try {
    tcp::Socket s = tcp::Socket::connect(parsed, tcp::Clock::now() + patience);
  } catch (const tcp::SocketError& e) {
    return e.err() == ECONNREFUSED;
  } catch (const PeerError&) {
    // Timeouts and other errors prove nothing.
  }
  return false;
}

}  // namespace chorus
