// The MPI library and MPI state of this process, shared by every mpi group.
//
// MPI is initialised once per process and finalised once, and the library,
// the user-defined ops and the set of live communicators belong to the
// process, not to one group: this is the backend's one piece of process-wide
// state. It is created on first use and deliberately never destroyed: a static
// destructor runs after Python's atexit and after MPI_Finalize, and touching
// MPI then is what makes MLX's MPI backend abort at exit after a split.
//
// Lifecycle:
//  - start(): loads the library, calls MPI_Init_thread(MPI_THREAD_MULTIPLE)
//    unless MPI is already initialised (mpi4py may have done it: then its
//    thread level is used and MPI stays mpi4py's to finalise).
//  - Every MpiGroup registers its communicator here and frees it in its
//    destructor while MPI is still up.
//  - shutdown() (Python's atexit, chorus/_mpi.py): frees every communicator
//    still alive (their groups then raise UsageError if used), frees the
//    user-defined ops, then calls MPI_Finalize if chorus initialised MPI.
//    Groups destroyed later, during interpreter teardown, find MPI finalised
//    and free nothing. With abort=true (an uncaught exception ended the
//    program) it calls MPI_Abort instead, because MPI_Finalize waits for
//    every rank and the others may be blocked in a collective waiting for
//    this one.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "chorus/backends/mpi/mpi_api.h"
#include "chorus/dtype.h"

namespace chorus::mpi {

class MpiGroup;

// What MPI needs to reduce one chorus dtype with one op.
struct Reduction {
  Datatype type;
  Op op;
};

class Runtime {
 public:
  static Runtime& instance();

  // The library load_api() tries ("" = its defaults); ignored once a load
  // was tried (see mpi::set_library).
  void set_library(std::string name);

  // The loaded library. Throws BackendUnavailable; a failed load is
  // remembered (dlopen would fail the same way again).
  const Api& api();
  // Whether the library loads and MPI has not been finalised.
  bool available();
  // "" when available(), otherwise why not.
  std::string unavailable_reason();

  // Initialises MPI if nobody has and creates the user-defined ops. Throws
  // BackendUnavailable when MPI was already finalised in this process.
  void start(bool verbose);

  // Datatype and op for (dtype, op); ops.cc has rejected complex max/min.
  Reduction reduction(Dtype dtype, ReduceOp op) const;

  // Held around every MPI call of a group: a real lock only when the library
  // gave less than MPI_THREAD_MULTIPLE (then calls from several Python
  // threads must not overlap), an empty one otherwise.
  std::unique_lock<std::mutex> call_lock();

  // Group registry, so shutdown() can free communicators before
  // MPI_Finalize. detach() frees the group's communicator unless MPI is
  // finalised. Lock order: the call lock, then mutex_.
  void attach(MpiGroup* group);
  void detach(MpiGroup* group);

  // Frees every communicator and op, then MPI_Finalize (when chorus
  // initialised MPI), or MPI_Abort(MPI_COMM_WORLD, 1) with abort=true.
  // Idempotent; does nothing when MPI never started.
  void shutdown(bool abort);

 private:
  Runtime() = default;
  bool finalized_locked() const;

  std::mutex mutex_;  // guards everything below
  std::unique_ptr<Api> api_;
  std::string library_;  // set_library()
  std::string load_error_;
  bool started_ = false;
  bool we_initialised_ = false;
  bool shut_down_ = false;
  std::atomic<bool> serialize_{false};  // set once by start(), before any group exists
  std::mutex call_mutex_;
  std::set<MpiGroup*> groups_;
  // Buffers of sends still in flight when their group was freed: MPI may
  // read them until the message is delivered, so they live until exit.
  std::vector<std::vector<uint8_t>> orphaned_sends_;
  // User-defined ops by [dtype][op] (only float dtypes have them).
  Op user_ops_[static_cast<int>(kLastDtype) + 1][3] = {};
};

}  // namespace chorus::mpi
