// How a call of a TCP backend (ring, mesh) ends when it throws: what it must
// undo and how the failure names the call, the same ladder for both.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "chorus/backends/group_impl.h"
#include "chorus/backends/tcp/group_config.h"
#include "chorus/common/error.h"

namespace chorus {

// Forwards a failure to the peers and drops what the call left dirty: the
// culprit, the text the peers raise, whether the culprit is dead, and why.
using AbortCall =
    std::function<void(int culprit, const std::string& text, bool fatal, Reason reason)>;

// Call from a catch (...) around the call (RingGroup::run, MeshGroup::run);
// rethrows what is being handled, after, by its type:
//   UsageError    nothing (links are clean)
//   LateEntrant   name_call
//   LinkFailure   abort with its culprit and forwarded text, name_call
//   Interrupted   abort naming this rank as the culprit
//   PeerError     abort naming this rank, name_call, and raises it again
//                 as "<prefix><op> failed: ..."
//   anything else abort naming this rank
// name_call fills in the call (op, number) and the culprit's address. `op`
// is the call, `ctx` the group's error prefix, `config` names this rank.
[[noreturn]] void rethrow_call_failure(const TcpGroupConfig& config, const ErrorContext& ctx,
                                       const std::string& op, const AbortCall& abort,
                                       const std::function<void(Failure&)>& name_call);

// Names the call (`op`; `call`, its number, 0 outside a collective) and the
// culprit's address in a failure.
void name_failed_call(Failure& failure, const TcpGroupConfig& config, const std::string& op,
                      uint64_t call);

}  // namespace chorus
