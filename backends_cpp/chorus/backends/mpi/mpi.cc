#include "chorus/backends/mpi/mpi.h"

#include "chorus/backends/mpi/mpi_group.h"
#include "chorus/backends/mpi/mpi_runtime.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"

namespace chorus::mpi {

void set_library(const std::string& name) { Runtime::instance().set_library(name); }

bool is_available() { return Runtime::instance().available(); }

std::string unavailable_reason() { return Runtime::instance().unavailable_reason(); }

GroupPtr init(const InitOptions& options) {
  Runtime& runtime = Runtime::instance();
  runtime.start(options.verbose);
  const Api& mpi = runtime.api();
  Comm world{};
  {
    auto lock = runtime.call_lock();
    const int rc = mpi.comm_dup(mpi.constants().comm_world, &world);
    if (rc != 0) {
      throw BackendUnavailable("[chorus mpi] MPI_Comm_dup(MPI_COMM_WORLD) failed: " +
                               mpi.error_string(rc));
    }
  }
  GroupConfig config;
  config.hostname = options.hostname;
  config.chunk_bytes = options.segment_bytes;
  config.verbose = options.verbose;
  auto group = std::make_shared<MpiGroup>(runtime, world, std::move(config));
  if (group->rank() != options.rank || group->size() != options.size) {
    throw UsageError("[chorus mpi] MPI_COMM_WORLD says rank " + std::to_string(group->rank()) +
                     " of " + std::to_string(group->size()) + " but the environment says rank " +
                     std::to_string(options.rank) + " of " + std::to_string(options.size) +
                     ": start every rank with one mpirun (not chorus launch plus mpirun)");
  }
  CHORUS_LOG(options.verbose, "[chorus mpi] rank ", group->rank(), "/", group->size(),
             " ready on a duplicate of MPI_COMM_WORLD");
  if (group->size() == 1) return make_single_group("mpi");
  return group;
}

void shutdown(bool abort) { Runtime::instance().shutdown(abort); }

}  // namespace chorus::mpi
