#include "chorus/backends/tcp/call_failure.h"

#include "chorus/backends/tcp/common.h"

namespace chorus {

void rethrow_call_failure(const TcpGroupConfig& config, const ErrorContext& ctx,
                          const std::string& op, const AbortCall& abort,
                          const std::function<void(Failure&)>& name_call) {
  try {
    throw;
  } catch (const UsageError&) {
    // Raised after a complete exchange (descriptor round, drained message):
    // the links are clean and the next call works as is.
    throw;
  } catch (LateEntrant& e) {
    name_call(e.failure());
    throw;
  } catch (LinkFailure& f) {
    abort(f.culprit(), f.forward(), f.fatal(), f.reason());
    name_call(f.failure());
    throw;
  } catch (const Interrupted& e) {
    abort(config.rank,
          rank_and_address(config, config.rank) + " " + e.what_happened() + " during " + op, false,
          e.reason());
    throw;
  } catch (const PeerError& e) {
    // Its cause, not its message: this group's prefix is already ours.
    abort(config.rank,
          rank_and_address(config, config.rank) + " failed during " + op + ": " + e.cause(), false,
          Reason::Aborted);
    Failure failure = e.failure();
    name_call(failure);
    throw PeerError(Said{ctx.prefix() + op + " failed: ", e.cause()}, failure);
  } catch (...) {
    abort(config.rank, rank_and_address(config, config.rank) + " failed during " + op, false,
          Reason::Aborted);
    throw;
  }
}

void name_failed_call(Failure& failure, const TcpGroupConfig& config, const std::string& op,
                      uint64_t call) {
  failure.op = op;
  failure.call = call;
  const int c = failure.culprit;
  if (c >= 0 && c < config.size && !config.hosts[c].empty()) {
    failure.culprit_where = config.hosts[c].front();
  }
}

}  // namespace chorus
