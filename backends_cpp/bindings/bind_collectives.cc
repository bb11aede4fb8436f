// Collectives over numpy arrays. The Python layer (chorus/collectives.py)
// passes C-contiguous inputs and freshly allocated outputs; these functions
// only convert, release the GIL and call chorus::ops.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "call_site.h"
#include "chorus/common/error.h"
#include "chorus/ops.h"
#include "convert.h"

namespace chorus::bindings {
namespace {

ReduceOp parse_op(const std::string& op) {
  if (op == "sum") return ReduceOp::Sum;
  if (op == "max") return ReduceOp::Max;
  if (op == "min") return ReduceOp::Min;
  throw py::value_error("unknown reduce op '" + op + "' (expected sum, max or min)");
}

void require_c_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + " must be C-contiguous");
  }
}

void require_writable(const py::array& a, const char* name) {
  if (!a.writeable()) throw py::value_error(std::string(name) + " must be writable");
}

CallDesc describe(const py::array& x, Collective kind, ReduceOp op = ReduceOp::Sum) {
  require_c_contiguous(x, "input");
  CallDesc desc;
  desc.kind = kind;
  desc.op = op;
  desc.dtype = dtype_of(x);
  desc.count = static_cast<uint64_t>(x.size());
  desc.shape_hash = shape_hash(x);
  desc.ndim = static_cast<uint8_t>(std::min<py::ssize_t>(x.ndim(), kUnknownDims - 1));
  for (int i = 0; i < kShownDims && i < x.ndim(); ++i) desc.dims[i] = x.shape(i);
  return desc;
}

// A tag as Python gives it: an int (bool is refused: tag=True is a slip, not
// tag 1). Its value (>= 0, and != 0 only where the backend has tags) is
// ops::send's and ops::recv's to check.
int tag_of(py::handle tag) {
  if (PyBool_Check(tag.ptr()) || !PyIndex_Check(tag.ptr())) {
    throw py::value_error("tag must be a non-negative integer, got " +
                          py::repr(tag).cast<std::string>());
  }
  const auto value = py::reinterpret_steal<py::object>(PyNumber_Index(tag.ptr()));
  int overflow = 0;
  const long long number = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  if (overflow != 0 || number > std::numeric_limits<int>::max() ||
      number < std::numeric_limits<int>::min()) {
    throw py::value_error("tag " + py::repr(tag).cast<std::string>() + " is out of range");
  }
  return static_cast<int>(number);
}

// The input to send: `x` itself, or a private copy in `keep` when `out`
// overlaps it partly (out=x[1:]), since backends read their input while
// they write the result. Exactly the same buffer is fine where the backends
// promise it (all_reduce: in may equal out), so all_sum(x, out=x) copies
// nothing.
const void* input_for(const py::array& x, const py::array& out, std::vector<char>& keep,
                      bool same_buffer_ok = false) {
  const auto* in = static_cast<const char*>(x.data());
  const auto* dst = static_cast<const char*>(out.data());
  const auto in_bytes = static_cast<size_t>(x.nbytes());
  const auto out_bytes = static_cast<size_t>(out.nbytes());
  const bool overlap = in < dst + out_bytes && dst < in + in_bytes;
  if (!overlap || in_bytes == 0) return in;
  if (same_buffer_ok && in == dst && in_bytes == out_bytes) return in;
  keep.assign(in, in + in_bytes);
  return keep.data();
}

// Runs a communication call with the GIL released. When a peer's abort ends
// the call while this process also has a pending signal (a Jupyter
// interrupt reaches every rank, and a neighbour may notice it first), the
// signal wins: the user interrupted this rank too, so it raises
// KeyboardInterrupt like the rank that noticed first.
//
// The signals reach the ranks one after another, so when the abort says a
// peer was interrupted (its reason), give our own signal a moment to arrive
// before settling for PeerError.
constexpr auto kSiblingSignalGrace = std::chrono::milliseconds(200);

template <typename Call>
void communicate(Call&& call) {
  note_call_site();  // for the flight record, while the GIL is held
  try {
    py::gil_scoped_release release;
    call();
  } catch (const PeerError& error) {
    const bool peer_interrupted = error.failure().reason == Reason::Interrupted;
    const auto deadline = std::chrono::steady_clock::now() + kSiblingSignalGrace;
    while (true) {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!peer_interrupted || std::chrono::steady_clock::now() >= deadline) throw;
      py::gil_scoped_release release;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

// all_reduce and all_gather take any objects: most calls pass a
// C-contiguous, native-order ndarray and either no out or an exactly fitting
// one, and for small messages the Python checks would cost more than the
// communication, so these are made here. Anything else (a list, a strided or
// byte-swapped array, an out that does not fit) returns None *before*
// communicating, and the Python layer converts or explains, then calls again.
bool plain_input(py::handle x) {
  if (!py::isinstance<py::array>(x)) return false;
  const auto a = py::reinterpret_borrow<py::array>(x);
  if (!(a.flags() & py::array::c_style)) return false;
  const char order = a.dtype().byteorder();
  const char native = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '<' : '>';
  return order == '=' || order == '|' || order == native;
}

// Large fresh results come from chorus.pool (recycled memory: no page faults
// once warm), which Python registers with set_result_allocator. Leaked on
// purpose: no Python object may be destroyed after the interpreter finalized.
py::object* result_allocator = nullptr;
py::ssize_t result_allocator_min_bytes = 0;

py::object fresh_result(const py::array& x, const std::vector<py::ssize_t>& shape) {
  if (result_allocator != nullptr) {
    py::ssize_t nbytes = x.itemsize();
    for (const auto d : shape) nbytes *= d;
    if (nbytes >= result_allocator_min_bytes) {
      py::tuple dims(shape.size());
      for (size_t i = 0; i < shape.size(); ++i) dims[i] = py::int_(shape[i]);
      py::object made = (*result_allocator)(dims, x.dtype());
      if (!py::isinstance<py::array>(made)) {
        throw py::type_error("chorus: the result allocator returned something else than an array");
      }
      return made;
    }
  }
  return py::array(x.dtype(), shape);
}

// out as given when it fits exactly, a new array when it is None, else null.
py::object fitting_out(py::handle out, const py::array& x, const std::vector<py::ssize_t>& shape) {
  if (out.is_none()) return fresh_result(x, shape);
  if (!py::isinstance<py::array>(out)) return py::object();
  const auto o = py::reinterpret_borrow<py::array>(out);
  if (!(o.flags() & py::array::c_style) || !o.writeable()) return py::object();
  if (o.ndim() != static_cast<py::ssize_t>(shape.size())) return py::object();
  for (size_t i = 0; i < shape.size(); ++i) {
    if (o.shape(static_cast<py::ssize_t>(i)) != shape[i]) return py::object();
  }
  if (!o.dtype().equal(x.dtype())) return py::object();
  return o;
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// ml_dtypes' bfloat16 (the one JAX's arrays convert to): a numpy dtype of
// kind 'V' today, with a type number given at registration, so it is known
// by name and size (importing ml_dtypes here would make it a dependency).
// Kind 'f' is checked too, should a later ml_dtypes declare it a float:
// numpy's own float16 is the one with type char 'e'.
//
// dtype.name is computed on every lookup, which costs more than a small
// collective: the scalar type it was last found on is kept (a reference, so
// its address is not reused) and compared first. Touched with the GIL held.
bool is_bfloat16(const py::dtype& dt) {
  if (dt.itemsize() != 2 || dt.has_fields()) return false;
  static PyObject* known_type = nullptr;
  PyObject* type = py::detail::array_descriptor_proxy(dt.ptr())->typeobj;
  if (type == known_type) return true;
  if (py::str(dt.attr("name")).cast<std::string>() != "bfloat16") return false;
  Py_XINCREF(type);
  Py_XDECREF(known_type);
  known_type = type;
  return true;
}

}  // namespace

Dtype dtype_of(const py::array& array) {
  const py::dtype dt = array.dtype();
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  // dtype.isnative without a Python attribute lookup per call.
  const char order = dt.byteorder();
  const char native = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '<' : '>';
  if (size > 1 && order != '=' && order != '|' && order != native)
    throw py::type_error("chorus needs native byte order arrays");
  switch (kind) {
    case 'b': return Dtype::Bool;
    case 'i':
      if (size == 1) return Dtype::Int8;
      if (size == 2) return Dtype::Int16;
      if (size == 4) return Dtype::Int32;
      if (size == 8) return Dtype::Int64;
      break;
    case 'u':
      if (size == 1) return Dtype::UInt8;
      if (size == 2) return Dtype::UInt16;
      if (size == 4) return Dtype::UInt32;
      if (size == 8) return Dtype::UInt64;
      break;
    case 'f':
      if (size == 2) return dt.char_() != 'e' && is_bfloat16(dt) ? Dtype::BFloat16 : Dtype::Float16;
      if (size == 4) return Dtype::Float32;
      if (size == 8) return Dtype::Float64;
      break;
    case 'c':
      if (size == 8) return Dtype::Complex64;
      if (size == 16) return Dtype::Complex128;
      break;
    case 'V':
      if (is_bfloat16(dt)) return Dtype::BFloat16;
      break;
    default: break;
  }
  throw py::type_error("chorus cannot communicate arrays of dtype " +
                       py::str(static_cast<py::object>(dt)).cast<std::string>());
}

uint64_t shape_hash(const py::array& array) {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ULL;
    }
  };
  mix(static_cast<uint64_t>(array.ndim()));
  for (py::ssize_t i = 0; i < array.ndim(); ++i) mix(static_cast<uint64_t>(array.shape(i)));
  return h;
}

void register_collectives(py::module_& m) {
  m.def(
      "set_result_allocator",
      [](py::object allocator, py::ssize_t min_bytes) {
        if (result_allocator == nullptr) {
          result_allocator = new py::object(std::move(allocator));
        } else {
          *result_allocator = std::move(allocator);
        }
        result_allocator_min_bytes = min_bytes;
      },
      py::arg("allocator"), py::arg("min_bytes"),
      "Fresh results of at least min_bytes come from allocator(shape, dtype).");
  m.def(
      "all_reduce",
      [](GroupImpl& g, py::handle xh, py::handle outh, const std::string& op) -> py::object {
        if (!plain_input(xh)) return py::none();
        const auto x = py::reinterpret_borrow<py::array>(xh);
        py::object result = fitting_out(outh, x, shape_of(x));
        if (!result) return py::none();
        auto out = py::reinterpret_borrow<py::array>(result);
        CallDesc desc = describe(x, Collective::AllReduce, parse_op(op));
        std::vector<char> keep;
        const void* in = input_for(x, out, keep, /*same_buffer_ok=*/true);
        void* dst = out.mutable_data();
        communicate([&] { ops::all_reduce(g, desc, in, dst); });
        return result;
      },
      py::arg("group"), py::arg("x"), py::arg("out"), py::arg("op"));
  m.def(
      "all_gather",
      [](GroupImpl& g, py::handle xh, py::handle outh) -> py::object {
        if (!plain_input(xh)) return py::none();
        const auto x = py::reinterpret_borrow<py::array>(xh);
        std::vector<py::ssize_t> shape = shape_of(x);
        if (shape.empty()) {
          shape.push_back(g.size());
        } else {
          shape[0] *= g.size();
        }
        py::object result = fitting_out(outh, x, shape);
        if (!result) return py::none();
        auto out = py::reinterpret_borrow<py::array>(result);
        CallDesc desc = describe(x, Collective::AllGather);
        std::vector<char> keep;
        const void* in = input_for(x, out, keep);
        void* dst = out.mutable_data();
        communicate([&] { ops::all_gather(g, desc, in, dst); });
        return result;
      },
      py::arg("group"), py::arg("x"), py::arg("out"));
  m.def(
      "reduce_scatter",
      [](GroupImpl& g, py::handle xh, py::handle outh, const std::string& op) -> py::object {
        if (!plain_input(xh)) return py::none();
        const auto x = py::reinterpret_borrow<py::array>(xh);
        CallDesc desc = describe(x, Collective::ReduceScatter, parse_op(op));
        // Before sizing the result: a bad shape is the error, not its out.
        ops::check_reduce_scatter(g, desc);
        std::vector<py::ssize_t> shape = shape_of(x);
        shape[0] /= g.size();
        py::object result = fitting_out(outh, x, shape);
        if (!result) return py::none();
        auto out = py::reinterpret_borrow<py::array>(result);
        std::vector<char> keep;
        const void* in = input_for(x, out, keep);
        void* dst = out.mutable_data();
        communicate([&] { ops::reduce_scatter(g, desc, in, dst); });
        return result;
      },
      py::arg("group"), py::arg("x"), py::arg("out"), py::arg("op") = "sum");
  m.def(
      "broadcast",
      [](GroupImpl& g, py::array& buf, int root) {
        CallDesc desc = describe(buf, Collective::Broadcast);
        require_writable(buf, "buffer");
        desc.root = root;
        void* data = buf.mutable_data();
        communicate([&] { ops::broadcast(g, desc, data); });
      },
      py::arg("group"), py::arg("buf"), py::arg("root"));
  m.def("barrier", [](GroupImpl& g) { communicate([&] { ops::barrier(g); }); }, py::arg("group"));
  m.def(
      "send",
      [](GroupImpl& g, const py::array& x, int dst, py::handle tag_object) {
        const int tag = tag_of(tag_object);
        require_c_contiguous(x, "input");
        const Dtype dtype = dtype_of(x);
        const void* data = x.data();
        const size_t nbytes = static_cast<size_t>(x.nbytes());
        communicate([&] { ops::send(g, data, nbytes, dtype, dst, tag); });
      },
      py::arg("group"), py::arg("x"), py::arg("dst"), py::kw_only(), py::arg("tag") = 0);
  m.def(
      "recv",
      [](GroupImpl& g, py::array& out, int src, py::handle tag_object) {
        const int tag = tag_of(tag_object);
        require_c_contiguous(out, "out");
        require_writable(out, "out");
        const Dtype dtype = dtype_of(out);
        void* data = out.mutable_data();
        const size_t nbytes = static_cast<size_t>(out.nbytes());
        communicate([&] { ops::recv(g, data, nbytes, dtype, src, tag); });
      },
      py::arg("group"), py::arg("out"), py::arg("src"), py::kw_only(), py::arg("tag") = 0);
}

}  // namespace chorus::bindings
