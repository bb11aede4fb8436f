#include "chorus/backends/mpi/mpi_runtime.h"

#include "chorus/backends/mpi/mpi_group.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"

namespace chorus::mpi {
namespace {

int index_of(Dtype dtype) { return static_cast<int>(dtype); }
int index_of(ReduceOp op) { return static_cast<int>(op); }

constexpr Dtype kUserOpDtypes[] = {Dtype::Float16, Dtype::BFloat16, Dtype::Float32, Dtype::Float64};
constexpr ReduceOp kOps[] = {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min};

}  // namespace

Runtime& Runtime::instance() {
  // Leaked on purpose: no destructor may touch MPI after Python's atexit
  // (see the header).
  static Runtime* runtime = new Runtime();
  return *runtime;
}

void Runtime::set_library(std::string name) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!api_ && load_error_.empty()) library_ = std::move(name);
}

const Api& Runtime::api() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (api_) return *api_;
  if (!load_error_.empty()) throw BackendUnavailable(load_error_);
  try {
    api_ = load_api(library_);
  } catch (const BackendUnavailable& error) {
    load_error_ = error.what();
    throw;
  }
  return *api_;
}

bool Runtime::available() { return unavailable_reason().empty(); }

std::string Runtime::unavailable_reason() {
  try {
    api();
  } catch (const BackendUnavailable& error) {
    return error.what();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (shut_down_ || finalized_locked()) {
    return "[chorus mpi] MPI has already been finalised in this process (it cannot be "
           "initialised twice)";
  }
  return "";
}

void Runtime::start(bool verbose) {
  const Api& mpi = api();
  std::lock_guard<std::mutex> lock(mutex_);
  if (shut_down_ || finalized_locked()) {
    throw BackendUnavailable(
        "[chorus mpi] MPI has already been finalised in this process (chorus finalises it at "
        "interpreter exit; MPI cannot be initialised twice)");
  }
  if (started_) return;
  const Constants& k = mpi.constants();
  int initialized = 0;
  int provided = 0;
  int rc = mpi.initialized(&initialized);
  if (rc == 0 && !initialized) {
    // argc/argv are optional since MPI-2; mpirun passes what MPI needs in the
    // environment.
    rc = mpi.init_thread(k.thread_multiple, &provided);
    if (rc != 0) {
      throw BackendUnavailable("[chorus mpi] MPI_Init_thread failed: " + mpi.error_string(rc));
    }
    we_initialised_ = true;
  } else if (rc == 0) {
    rc = mpi.query_thread(&provided);
  }
  if (rc != 0) {
    throw BackendUnavailable("[chorus mpi] cannot query MPI's state: " + mpi.error_string(rc));
  }
  // Python threads release the GIL inside every call: below
  // MPI_THREAD_MULTIPLE two of them must not be inside MPI at once.
  serialize_ = provided < k.thread_multiple;
  for (Dtype dtype : kUserOpDtypes) {
    for (ReduceOp op : kOps) {
      Op& slot = user_ops_[index_of(dtype)][index_of(op)];
      rc = mpi.op_create(dtype, op, &slot);
      if (rc != 0) {
        throw BackendUnavailable("[chorus mpi] MPI_Op_create failed: " + mpi.error_string(rc));
      }
    }
  }
  started_ = true;
  CHORUS_LOG(verbose, "[chorus mpi] ", mpi.version(), " (", mpi.library(), ", ", mpi.abi(),
             " ABI); ", we_initialised_ ? "initialised by chorus" : "already initialised",
             ", thread level ", provided, serialize_ ? " (calls serialised)" : "");
}

Reduction Runtime::reduction(Dtype dtype, ReduceOp op) const {
  const Constants& k = api_->constants();
  const Op builtin = op == ReduceOp::Sum ? k.sum : op == ReduceOp::Max ? k.max : k.min;
  const Op user = user_ops_[index_of(dtype)][index_of(op)];
  switch (dtype) {
    // numpy's bool sum and max are "or", min is "and"; MPI defines only the
    // logical ops for C _Bool.
    case Dtype::Bool: return {k.c_bool, op == ReduceOp::Min ? k.land : k.lor};
    case Dtype::Int8: return {k.int8, builtin};
    case Dtype::Int16: return {k.int16, builtin};
    case Dtype::Int32: return {k.int32, builtin};
    case Dtype::Int64: return {k.int64, builtin};
    case Dtype::UInt8: return {k.uint8, builtin};
    case Dtype::UInt16: return {k.uint16, builtin};
    case Dtype::UInt32: return {k.uint32, builtin};
    case Dtype::UInt64: return {k.uint64, builtin};
    // float16 and bfloat16 have no MPI type: 2-byte elements with chorus's
    // own kernel.
    case Dtype::Float16:
    case Dtype::BFloat16: return {k.uint16, user};
    // MPI_MAX/MIN keep whichever operand compares greater, so a NaN may be
    // dropped; np.maximum (and every other backend) propagates it.
    case Dtype::Float32: return {k.float32, op == ReduceOp::Sum ? k.sum : user};
    case Dtype::Float64: return {k.float64, op == ReduceOp::Sum ? k.sum : user};
    case Dtype::Complex64: return {k.complex64, k.sum};
    case Dtype::Complex128: return {k.complex128, k.sum};
  }
  // Every enumerator returns above; an out-of-range value is a bug.
  throw Error("mpi: unknown dtype");
}

std::unique_lock<std::mutex> Runtime::call_lock() {
  if (serialize_) return std::unique_lock<std::mutex>(call_mutex_);
  return std::unique_lock<std::mutex>();
}

void Runtime::attach(MpiGroup* group) {
  std::lock_guard<std::mutex> lock(mutex_);
  groups_.insert(group);
}

void Runtime::detach(MpiGroup* group) {
  auto call = call_lock();
  std::lock_guard<std::mutex> lock(mutex_);
  // Not registered any more: shutdown() already released it.
  if (groups_.erase(group) == 0) return;
  if (shut_down_ || finalized_locked()) return;  // MPI is gone (mpi4py's MPI.Finalize())
  group->release(orphaned_sends_);
}

void Runtime::shutdown(bool abort) {
  auto call = call_lock();
  std::lock_guard<std::mutex> lock(mutex_);
  if (!started_ || shut_down_) return;
  shut_down_ = true;
  if (finalized_locked()) {
    groups_.clear();  // someone finalised MPI under us: nothing may be freed now
    return;
  }
  const Api& mpi = *api_;
  if (abort) mpi.abort(mpi.constants().comm_world, 1);  // ends the whole job; does not return
  for (MpiGroup* group : groups_) group->release(orphaned_sends_);
  groups_.clear();
  for (Dtype dtype : kUserOpDtypes) {
    for (ReduceOp op : kOps) mpi.op_free(&user_ops_[index_of(dtype)][index_of(op)]);
  }
  // When mpi4py (or the program) initialised MPI, finalising is its job: it
  // may still use MPI after this (mpi4py finalises from Py_AtExit, after
  // Python's atexit handlers such as this one).
  if (we_initialised_) mpi.finalize();
}

bool Runtime::finalized_locked() const {
  int finalized = 0;
  return api_ && api_->finalized(&finalized) == 0 && finalized != 0;
}

}  // namespace chorus::mpi
