#include "chorus/backends/mpi/mpi_api.h"

#include <dlfcn.h>

#include <cstring>
#include <vector>

#include "chorus/algorithms/reduce.h"
#include "chorus/common/error.h"

namespace chorus::mpi {
namespace {

// ------------------------------------------------------------- ABI traits

// Open MPI's ABI (mpi.h of Open MPI 3.x-5.x, libmpi.so.40). Values checked
// against Debian's Open MPI 4.1.4 headers.
struct OpenMpiTraits {
  static constexpr const char* kName = "Open MPI";
  // Exported only by Open MPI: how the loader recognises it.
  static constexpr const char* kDetectSymbol = "ompi_mpi_comm_world";
  // Every handle is a pointer to an opaque struct.
  using Native = void*;
  static Native native(std::uintptr_t bits) { return reinterpret_cast<Native>(bits); }
  static std::uintptr_t bits(Native handle) { return reinterpret_cast<std::uintptr_t>(handle); }
  // struct ompi_status_public_t: int MPI_SOURCE, MPI_TAG, MPI_ERROR,
  // _cancelled; size_t _ucount.
  static constexpr size_t kStatusBytes = 4 * sizeof(int) + sizeof(size_t);
  static void* status_ignore() { return nullptr; }  // MPI_STATUS_IGNORE
  static constexpr std::uintptr_t kInPlace = 1;     // MPI_IN_PLACE is (void*)1
  static constexpr int kThreadMultiple = 3;         // enum: SINGLE, FUNNELED, SERIALIZED, MULTIPLE
  static constexpr int kTagUbKeyval = 0;            // MPI_TAG_UB: first of the predefined keyvals
  // MPI_MAX_ERROR_STRING is 256 and MPI_MAX_LIBRARY_VERSION_STRING 256 here;
  // the buffers below are sized for MPICH's larger limits too.

  // Predefined handles are the addresses of exported globals; `global`
  // returns a symbol's address as handle bits (and notes it if missing). An
  // MPICH table would assign its integer constants here instead.
  template <typename Lookup>
  static void fill(Constants& c, Lookup&& global) {
    c.comm_world.bits = global("ompi_mpi_comm_world");
    c.errors_return.bits = global("ompi_mpi_errors_return");
    c.byte.bits = global("ompi_mpi_byte");
    c.c_bool.bits = global("ompi_mpi_c_bool");
    c.int8.bits = global("ompi_mpi_int8_t");
    c.int16.bits = global("ompi_mpi_int16_t");
    c.int32.bits = global("ompi_mpi_int32_t");
    c.int64.bits = global("ompi_mpi_int64_t");
    c.uint8.bits = global("ompi_mpi_uint8_t");
    c.uint16.bits = global("ompi_mpi_uint16_t");
    c.uint32.bits = global("ompi_mpi_uint32_t");
    c.uint64.bits = global("ompi_mpi_uint64_t");
    c.float32.bits = global("ompi_mpi_float");
    c.float64.bits = global("ompi_mpi_double");
    c.complex64.bits = global("ompi_mpi_c_float_complex");
    c.complex128.bits = global("ompi_mpi_c_double_complex");
    c.sum.bits = global("ompi_mpi_op_sum");
    c.max.bits = global("ompi_mpi_op_max");
    c.min.bits = global("ompi_mpi_op_min");
    c.land.bits = global("ompi_mpi_op_land");
    c.lor.bits = global("ompi_mpi_op_lor");
    c.in_place = reinterpret_cast<const void*>(kInPlace);
    c.thread_multiple = kThreadMultiple;
    c.tag_ub_keyval = kTagUbKeyval;
  }
};
static_assert(OpenMpiTraits::kStatusBytes <= sizeof(Status), "Status too small for Open MPI");

// Owns a dlopen() handle until the loader hands it to an Api for good.
struct DlClose {
  void operator()(void* handle) const { dlclose(handle); }
};
using DlHandle = std::unique_ptr<void, DlClose>;

std::string last_dlerror() {
  const char* text = dlerror();
  return text != nullptr ? text : "unknown dlopen error";
}

// ------------------------------------------------------------- Api over one ABI

template <typename Traits>
class AbiApi final : public Api {
  using N = typename Traits::Native;
  using UserFunction = void(void*, void*, int*, N*);

 public:
  // Resolves every function and predefined handle; on failure returns null
  // and says which symbols are missing.
  static std::unique_ptr<Api> load(DlHandle lib, const std::string& name, std::string* error) {
    std::unique_ptr<AbiApi> api(new AbiApi());
    api->lib_ = lib.get();
    api->resolve_all();
    if (!api->missing_.empty()) {
      *error = "loaded, but it lacks " + api->missing_;
      return nullptr;
    }
    api->library_ = name;
    api->abi_ = Traits::kName;
    api->version_ = api->read_version();
    // Deliberately never dlclose()d: once MPI is initialised the library has
    // threads, signal handlers and atexit hooks pointing into it, and Open MPI
    // does not support being unloaded.
    lib.release();
    return api;
  }

  int initialized(int* flag) const override { return initialized_(flag); }
  int finalized(int* flag) const override { return finalized_(flag); }
  int init_thread(int required, int* provided) const override {
    return init_thread_(nullptr, nullptr, required, provided);
  }
  int query_thread(int* provided) const override { return query_thread_(provided); }
  int finalize() const override { return finalize_(); }
  int abort(Comm comm, int code) const override { return abort_(n(comm), code); }

  int comm_rank(Comm comm, int* rank) const override { return comm_rank_(n(comm), rank); }
  int comm_size(Comm comm, int* size) const override { return comm_size_(n(comm), size); }
  int comm_dup(Comm comm, Comm* out) const override {
    N native{};
    const int rc = comm_dup_(n(comm), &native);
    out->bits = Traits::bits(native);
    return rc;
  }
  int comm_split(Comm comm, int color, int key, Comm* out) const override {
    N native{};
    const int rc = comm_split_(n(comm), color, key, &native);
    out->bits = Traits::bits(native);
    return rc;
  }
  int comm_free(Comm* comm) const override {
    N native = n(*comm);
    const int rc = comm_free_(&native);
    comm->bits = Traits::bits(native);
    return rc;
  }
  int comm_set_errhandler(Comm comm, Errhandler handler) const override {
    return comm_set_errhandler_(n(comm), n(handler));
  }
  int comm_get_int_attr(Comm comm, int keyval, int* value, int* flag) const override {
    // Predefined attributes are returned as a pointer to the value.
    int* pointer = nullptr;
    const int rc = comm_get_attr_(n(comm), keyval, &pointer, flag);
    if (rc == 0 && *flag && pointer != nullptr) *value = *pointer;
    return rc;
  }

  int allreduce(const void* in, void* out, int count, Datatype type, Op op,
                Comm comm) const override {
    return allreduce_(in, out, count, n(type), n(op), n(comm));
  }
  int allgather(const void* in, int in_count, Datatype in_type, void* out, int out_count,
                Datatype out_type, Comm comm) const override {
    return allgather_(in, in_count, n(in_type), out, out_count, n(out_type), n(comm));
  }
  int reduce_scatter_block(const void* in, void* out, int count, Datatype type, Op op,
                           Comm comm) const override {
    return reduce_scatter_block_(in, out, count, n(type), n(op), n(comm));
  }
  int bcast(void* buf, int count, Datatype type, int root, Comm comm) const override {
    return bcast_(buf, count, n(type), root, n(comm));
  }

  int isend(const void* buf, int count, Datatype type, int dst, int tag, Comm comm,
            Request* request) const override {
    N native{};
    const int rc = isend_(buf, count, n(type), dst, tag, n(comm), &native);
    request->bits = Traits::bits(native);
    return rc;
  }
  int recv(void* buf, int count, Datatype type, int src, int tag, Comm comm) const override {
    return recv_(buf, count, n(type), src, tag, n(comm), Traits::status_ignore());
  }
  int probe(int src, int tag, Comm comm, Status* status) const override {
    return probe_(src, tag, n(comm), status);
  }
  int get_count(const Status& status, Datatype type, int* count) const override {
    return get_count_(&status, n(type), count);
  }
  int test(Request* request, int* done) const override {
    N native = n(*request);
    const int rc = test_(&native, done, Traits::status_ignore());
    request->bits = Traits::bits(native);
    return rc;
  }
  int request_free(Request* request) const override {
    N native = n(*request);
    const int rc = request_free_(&native);
    request->bits = Traits::bits(native);
    return rc;
  }

  int op_create(Dtype dtype, ReduceOp op, Op* out) const override {
    UserFunction* function = user_function(dtype, op);
    if (function == nullptr) return -1;
    N native{};
    const int rc = op_create_(function, 1 /* commutative */, &native);
    out->bits = Traits::bits(native);
    return rc;
  }
  int op_free(Op* op) const override {
    N native = n(*op);
    const int rc = op_free_(&native);
    op->bits = Traits::bits(native);
    return rc;
  }

  std::string error_string(int code) const override {
    std::vector<char> text(4096, '\0');
    int length = 0;
    if (error_string_(code, text.data(), &length) != 0 || length <= 0) {
      return "MPI error " + std::to_string(code);
    }
    return std::string(text.data(), std::min<size_t>(static_cast<size_t>(length), text.size()));
  }

 private:
  AbiApi() = default;

  template <typename H>
  static N n(H handle) {
    return Traits::native(handle.bits);
  }

  // MPI calls this with inoutvec[i] = invec[i] op inoutvec[i]. Only
  // instantiated for (dtype, op) pairs reduce_kernel() accepts, so it never
  // throws through MPI's C frames.
  template <Dtype D, ReduceOp O>
  static void run_kernel(void* in, void* inout, int* length, N* /*datatype*/) {
    static const ReduceKernel kernel = reduce_kernel(D, O);
    kernel(inout, in, inout, static_cast<size_t>(*length));
  }

  template <Dtype D>
  static UserFunction* for_op(ReduceOp op) {
    switch (op) {
      case ReduceOp::Sum: return &run_kernel<D, ReduceOp::Sum>;
      case ReduceOp::Max: return &run_kernel<D, ReduceOp::Max>;
      case ReduceOp::Min: return &run_kernel<D, ReduceOp::Min>;
    }
    return nullptr;
  }

  static UserFunction* user_function(Dtype dtype, ReduceOp op) {
    switch (dtype) {
      case Dtype::Float16: return for_op<Dtype::Float16>(op);
      case Dtype::BFloat16: return for_op<Dtype::BFloat16>(op);
      case Dtype::Float32: return for_op<Dtype::Float32>(op);
      case Dtype::Float64: return for_op<Dtype::Float64>(op);
      default: return nullptr;
    }
  }

  template <typename F>
  void resolve(F*& function, const char* symbol) {
    function = reinterpret_cast<F*>(dlsym(lib_, symbol));
    if (function == nullptr) note_missing(symbol);
  }

  void note_missing(const char* symbol) {
    missing_ += (missing_.empty() ? "symbol " : ", ");
    missing_ += symbol;
  }

  void resolve_all() {
    resolve(initialized_, "MPI_Initialized");
    resolve(finalized_, "MPI_Finalized");
    resolve(init_thread_, "MPI_Init_thread");
    resolve(query_thread_, "MPI_Query_thread");
    resolve(finalize_, "MPI_Finalize");
    resolve(abort_, "MPI_Abort");
    resolve(comm_rank_, "MPI_Comm_rank");
    resolve(comm_size_, "MPI_Comm_size");
    resolve(comm_dup_, "MPI_Comm_dup");
    resolve(comm_split_, "MPI_Comm_split");
    resolve(comm_free_, "MPI_Comm_free");
    resolve(comm_set_errhandler_, "MPI_Comm_set_errhandler");
    resolve(comm_get_attr_, "MPI_Comm_get_attr");
    resolve(allreduce_, "MPI_Allreduce");
    resolve(allgather_, "MPI_Allgather");
    resolve(reduce_scatter_block_, "MPI_Reduce_scatter_block");
    resolve(bcast_, "MPI_Bcast");
    resolve(isend_, "MPI_Isend");
    resolve(recv_, "MPI_Recv");
    resolve(probe_, "MPI_Probe");
    resolve(get_count_, "MPI_Get_count");
    resolve(test_, "MPI_Test");
    resolve(request_free_, "MPI_Request_free");
    resolve(op_create_, "MPI_Op_create");
    resolve(op_free_, "MPI_Op_free");
    resolve(error_string_, "MPI_Error_string");
    resolve(library_version_, "MPI_Get_library_version");

    Traits::fill(constants_, [this](const char* symbol) {
      void* address = dlsym(lib_, symbol);
      if (address == nullptr) note_missing(symbol);
      return reinterpret_cast<std::uintptr_t>(address);
    });
  }

  std::string read_version() const {
    // MPI_Get_library_version may be called before MPI_Init (MPI-3).
    std::vector<char> text(16384, '\0');
    int length = 0;
    if (library_version_(text.data(), &length) != 0 || length <= 0) return "unknown version";
    std::string version(text.data(), std::min<size_t>(static_cast<size_t>(length), text.size()));
    const size_t newline = version.find('\n');
    if (newline != std::string::npos) version.resize(newline);
    while (!version.empty() && (version.back() == '\0' || version.back() == ' '))
      version.pop_back();
    return version;
  }

  void* lib_ = nullptr;
  std::string missing_;

  int (*initialized_)(int*) = nullptr;
  int (*finalized_)(int*) = nullptr;
  int (*init_thread_)(int*, char***, int, int*) = nullptr;
  int (*query_thread_)(int*) = nullptr;
  int (*finalize_)() = nullptr;
  int (*abort_)(N, int) = nullptr;
  int (*comm_rank_)(N, int*) = nullptr;
  int (*comm_size_)(N, int*) = nullptr;
  int (*comm_dup_)(N, N*) = nullptr;
  int (*comm_split_)(N, int, int, N*) = nullptr;
  int (*comm_free_)(N*) = nullptr;
  int (*comm_set_errhandler_)(N, N) = nullptr;
  int (*comm_get_attr_)(N, int, void*, int*) = nullptr;
  int (*allreduce_)(const void*, void*, int, N, N, N) = nullptr;
  int (*allgather_)(const void*, int, N, void*, int, N, N) = nullptr;
  int (*reduce_scatter_block_)(const void*, void*, int, N, N, N) = nullptr;
  int (*bcast_)(void*, int, N, int, N) = nullptr;
  int (*isend_)(const void*, int, N, int, int, N, N*) = nullptr;
  int (*recv_)(void*, int, N, int, int, N, void*) = nullptr;
  int (*probe_)(int, int, N, void*) = nullptr;
  int (*get_count_)(const void*, N, int*) = nullptr;
  int (*test_)(N*, int*, void*) = nullptr;
  int (*request_free_)(N*) = nullptr;
  int (*op_create_)(UserFunction*, int, N*) = nullptr;
  int (*op_free_)(N*) = nullptr;
  int (*error_string_)(int, char*, int*) = nullptr;
  int (*library_version_)(char*, int*) = nullptr;
};

// What a library that is not Open MPI calls itself, for the error message.
std::string foreign_version(void* lib) {
  using VersionFn = int(char*, int*);
  auto* version = reinterpret_cast<VersionFn*>(dlsym(lib, "MPI_Get_library_version"));
  if (version == nullptr) return "it exports no MPI_Get_library_version: not an MPI library";
  std::vector<char> text(16384, '\0');
  int length = 0;
  if (version(text.data(), &length) != 0 || length <= 0) return "an MPI of unknown version";
  std::string line(text.data(), std::min<size_t>(static_cast<size_t>(length), text.size()));
  line = line.substr(0, line.find('\n'));
  return "it is \"" + line + "\"";
}

}  // namespace

std::unique_ptr<Api> load_api(const std::string& chosen) {
  // `chosen` comes from mpi::set_library() rather than InitOptions:
  // is_available() must answer too, and it has no options.
  const bool from_env = !chosen.empty();
  std::vector<std::string> names;
  if (from_env) {
    names.emplace_back(chosen);
  } else {
    for (const char* name : kDefaultLibraries) names.emplace_back(name);
  }

  std::string failures;
  for (const std::string& name : names) {
    if (!failures.empty()) failures += "; ";
    // RTLD_GLOBAL: Open MPI's plugins (mca_*.so) resolve libmpi's symbols
    // through the global scope.
    DlHandle lib(dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL));
    if (!lib) {
      failures += last_dlerror();
      continue;
    }
    if (dlsym(lib.get(), OpenMpiTraits::kDetectSymbol) != nullptr) {
      std::string error;
      if (auto api = AbiApi<OpenMpiTraits>::load(std::move(lib), name, &error)) return api;
      failures += name + ": " + error;
      continue;
    }
    failures +=
        name + ": " + foreign_version(lib.get()) +
        ", and chorus implements only Open MPI's ABI (libmpi.so.40; MPICH-family "
        "libraries would need an ABI table, see backends_cpp/chorus/backends/mpi/mpi_api.h)";
  }
  std::string message = "[chorus mpi] cannot load an MPI library: ";
  if (from_env) {
    message += "CHORUS_MPI_LIBNAME=" + names.front() + " failed: " + failures;
  } else {
    message += "tried ";
    for (size_t i = 0; i < names.size(); ++i) message += (i ? ", " : "") + names[i];
    message += " (" + failures +
               "). Install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin) or set "
               "CHORUS_MPI_LIBNAME to the path of its libmpi.so";
  }
  throw BackendUnavailable(message);
}

}  // namespace chorus::mpi
