// Where the TCP backends learn their peers' addresses: the hostfile when there
// is one, otherwise a rendezvous through rank 0 at CHORUS_COORDINATOR (a
// scheduler starts the ranks and nobody wrote a hostfile).
//
// Rendezvous wire protocol, on one connection per rank to the coordinator:
//   rank k -> rank 0   the TCP handshake (handshake.h: token proof, rank k,
//                      group = hash(job id, "rendezvous"))
//   rank k -> rank 0   {magic "CHRZ", length} + "ip:port ip:port ..." (k's listeners)
//   rank 0 -> rank k   {magic "CHRZ", status, length} + one line per rank with
//                      its addresses (status 0), or an error text (status 1:
//                      which ranks never arrived)
// CHORUS_COORDINATOR may name a host ("node1:29500"); it is resolved once.
// Rank 0 listens on every interface at its port. A listener bound to a
// wildcard address is reported with the IP its rendezvous connection used
// (rank k: the address its connection left from; rank 0: the address rank 1
// reached), which is one the other side's network reaches.
#pragma once

#include <string>
#include <vector>

#include "chorus/backends/group_impl.h"
#include "chorus/transport/tcp/handshake.h"
#include "chorus/transport/tcp/listener.h"

namespace chorus::rendezvous {

struct Options {
  int rank = 0;
  int size = 1;
  std::string coordinator;  // "ip:port" where rank 0 listens
  tcp::HandshakeId id;      // token + group_hash(job id, "rendezvous")
  double timeout_s = 60;    // for the whole exchange
  bool verbose = false;
  std::string backend;  // for messages: "[chorus mesh] rank 2/4 (hostname): "
  std::string hostname;
};

// Exchanges listen addresses; returns one entry per rank. Rank 0 passes the
// listener bound to the coordinator's port (it keeps it: the exchange
// accepts on a duplicate and stops before it answers, so later connections
// wait in the backlog for the backend's own acceptor). Throws PeerTimeout
// naming the ranks that never arrived (on rank 0 and, through the error
// reply, on every rank that did), PeerError for a coordinator that refuses
// our token.
std::vector<std::vector<std::string>> exchange(const Options& options,
                                               const std::vector<tcp::Listener>& listeners);

// Every rank's addresses and this rank's listeners, as a backend's init needs
// them: the hostfile with the launcher's listen fds (or binding hosts[rank]),
// or, with no hostfile and a coordinator, a listener of our own (rank 0: at
// the coordinator's port) and exchange(). `backend` names the error prefix.
struct Endpoints {
  std::vector<std::vector<std::string>> hosts;
  std::vector<tcp::Listener> listeners;
};
Endpoints endpoints(const InitOptions& options, const std::string& backend);

}  // namespace chorus::rendezvous
