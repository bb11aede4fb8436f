// The slice of the MPI C ABI the mpi backend uses, resolved at run time.
//
// chorus never includes mpi.h and never links libmpi: the library is
// dlopen()ed the first time the backend is asked for, so the build needs no
// MPI at all and a machine without it just reports the backend unavailable.
//
// What differs between MPI implementations is the ABI of handles and
// constants, not the functions:
//  - Open MPI (libmpi.so.40: Open MPI 3.x, 4.x and 5.x): every handle type
//    (MPI_Comm, MPI_Datatype, MPI_Op, MPI_Request, MPI_Errhandler) is a
//    pointer to an opaque struct, and a predefined handle is the address of an
//    exported global: MPI_COMM_WORLD is &ompi_mpi_comm_world, MPI_FLOAT is
//    &ompi_mpi_float, MPI_SUM is &ompi_mpi_op_sum. The loader resolves those
//    with dlsym like the functions. Implemented, and what CI runs.
//  - MPICH and its ABI family (libmpi.so.12: MPICH, Intel MPI, MVAPICH):
//    handles are ints and predefined handles are integer constants of its
//    mpi.h (MPI_COMM_WORLD is 0x44000000), MPI_Status has another layout and
//    MPI_STATUS_IGNORE is (MPI_Status*)1. Not implemented: such a library is
//    recognised and reported unsupported.
//
// The backend sees neither ABI: it holds handles as Handle<Tag> (an integer
// wide enough for a pointer or an int), statuses as an opaque Status buffer
// large enough for both layouts, and calls the virtual functions of Api.
// AbiApi<Traits> in mpi_api.cc converts to the native types. Adding MPICH
// means writing an MpichTraits beside OpenMpiTraits (native handle type int,
// constants copied from MPICH's mpi.h, a symbol only MPICH exports for
// detection) and one more branch in load_api(); nothing above this file
// changes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "chorus/dtype.h"

namespace chorus::mpi {

// An MPI handle as the backend stores it, typed by what it refers to so a
// communicator cannot be passed where a datatype is expected.
template <typename Tag>
struct Handle {
  std::uintptr_t bits = 0;
  friend bool operator==(Handle a, Handle b) { return a.bits == b.bits; }
  friend bool operator!=(Handle a, Handle b) { return a.bits != b.bits; }
};
using Comm = Handle<struct CommTag>;
using Datatype = Handle<struct DatatypeTag>;
using Op = Handle<struct OpTag>;
using Request = Handle<struct RequestTag>;
using Errhandler = Handle<struct ErrhandlerTag>;

// MPI_Status, opaque: only MPI_Get_count reads it. Open MPI's is 24 bytes,
// MPICH's 20; the loader checks its ABI's size against this.
struct Status {
  alignas(16) unsigned char bytes[64];
};

// Predefined handles and integer constants of the loaded library.
struct Constants {
  Comm comm_world;
  Errhandler errors_return;
  Datatype byte, c_bool;
  Datatype int8, int16, int32, int64, uint8, uint16, uint32, uint64;
  Datatype float32, float64, complex64, complex128;
  Op sum, max, min, land, lor;
  const void* in_place = nullptr;  // MPI_IN_PLACE
  int thread_multiple = 0;         // MPI_THREAD_MULTIPLE
  int tag_ub_keyval = 0;           // MPI_TAG_UB (attribute key of the largest tag)
};

// The functions the backend calls, each returning MPI's error code (0 =
// MPI_SUCCESS), with the native handle types hidden. Calls that take a status
// the backend does not read pass MPI_STATUS_IGNORE.
class Api {
 public:
  virtual ~Api() = default;

  const Constants& constants() const { return constants_; }
  // The name dlopen() accepted ("libmpi.so.40") and the ABI family ("Open MPI").
  const std::string& library() const { return library_; }
  const char* abi() const { return abi_; }
  // First line of MPI_Get_library_version ("Open MPI v4.1.4, package: ...").
  const std::string& version() const { return version_; }

  virtual int initialized(int* flag) const = 0;
  virtual int finalized(int* flag) const = 0;
  virtual int init_thread(int required, int* provided) const = 0;
  virtual int query_thread(int* provided) const = 0;
  virtual int finalize() const = 0;
  virtual int abort(Comm comm, int code) const = 0;

  virtual int comm_rank(Comm comm, int* rank) const = 0;
  virtual int comm_size(Comm comm, int* size) const = 0;
  virtual int comm_dup(Comm comm, Comm* out) const = 0;
  virtual int comm_split(Comm comm, int color, int key, Comm* out) const = 0;
  virtual int comm_free(Comm* comm) const = 0;
  virtual int comm_set_errhandler(Comm comm, Errhandler handler) const = 0;
  // For an integer-valued attribute such as MPI_TAG_UB: *value is set when *flag.
  virtual int comm_get_int_attr(Comm comm, int keyval, int* value, int* flag) const = 0;

  virtual int allreduce(const void* in, void* out, int count, Datatype type, Op op,
                        Comm comm) const = 0;
  virtual int allgather(const void* in, int in_count, Datatype in_type, void* out, int out_count,
                        Datatype out_type, Comm comm) const = 0;
  virtual int reduce_scatter_block(const void* in, void* out, int count, Datatype type, Op op,
                                   Comm comm) const = 0;
  virtual int bcast(void* buf, int count, Datatype type, int root, Comm comm) const = 0;

  virtual int isend(const void* buf, int count, Datatype type, int dst, int tag, Comm comm,
                    Request* request) const = 0;
  virtual int recv(void* buf, int count, Datatype type, int src, int tag, Comm comm) const = 0;
  virtual int probe(int src, int tag, Comm comm, Status* status) const = 0;
  virtual int get_count(const Status& status, Datatype type, int* count) const = 0;
  virtual int test(Request* request, int* done) const = 0;
  virtual int request_free(Request* request) const = 0;

  // A commutative user-defined op that runs chorus's own reduce kernel
  // (algorithms/reduce.h) for dtype: float16 and bfloat16 (no MPI type) and
  // float max/min (MPI_MAX does not propagate NaN as np.maximum does). Only
  // Float16, BFloat16, Float32 and Float64 have one; other dtypes return a
  // non-zero code.
  virtual int op_create(Dtype dtype, ReduceOp op, Op* out) const = 0;
  virtual int op_free(Op* op) const = 0;

  // MPI_Error_string, or "MPI error <code>" when even that fails.
  virtual std::string error_string(int code) const = 0;

 protected:
  Constants constants_;
  std::string library_;
  std::string version_;
  const char* abi_ = "";
};

// The default libraries tried, in order, when CHORUS_MPI_LIBNAME is unset.
constexpr const char* kDefaultLibraries[] = {"libmpi.so.40", "libmpi.so", "libmpi.so.12"};

// Loads `chosen`, the library named by CHORUS_MPI_LIBNAME (a name for the
// dynamic linker's search or a path; mpi::set_library), or when it is empty
// the first of kDefaultLibraries that loads and has a supported ABI. Throws
// BackendUnavailable listing every library tried and why each failed. The
// library is never unloaded (see mpi_api.cc).
std::unique_ptr<Api> load_api(const std::string& chosen);

}  // namespace chorus::mpi
