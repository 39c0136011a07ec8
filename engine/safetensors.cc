#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <optional>
#include <set>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/echo.h"
#include "engine/status_macros.h"

namespace trams::engine {
namespace {

// The format and our memcpy-based readers are little-endian.
static_assert(std::endian::native == std::endian::little, "trams assumes a little-endian host");

constexpr size_t kMaxHeaderDepth = 8;  // a valid header needs 3 (object, entry, shape)
constexpr size_t kMaxListLength = 64;   // shape rank (PyTorch allows 64 dims); data_offsets has 2
constexpr std::string_view kMetadataKey = "__metadata__";

using nlohmann::json;

std::optional<DType> ParseDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "F16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  if (name == "I32") return DType::kI32;
  if (name == "I64") return DType::kI64;
  if (name == "U8") return DType::kU8;
  return std::nullopt;
}

// A JSON integer as a non-negative uint64 (rejects floats, negatives and non-numbers).
std::optional<uint64_t> AsNonNegativeInt(const json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return std::nullopt;
}

// numel * element size in bytes, or nullopt on overflow of int64 / size_t.
std::optional<size_t> CheckedNumBytes(const std::vector<int64_t>& shape, size_t elem_size) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(numel, d, &numel)) return std::nullopt;
  }
  size_t nbytes;
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel), elem_size, &nbytes)) return std::nullopt;
  return nbytes;
}

// A short description of a JSON value for error messages. Never recurses: json::dump would, and
// a corrupt header can nest deeply.
std::string Describe(const json& j) {
  if (j.is_structured()) return std::string(j.type_name());
  // Strings of a parsed header are valid UTF-8, but replace rather than throw if one is not.
  return EchoForError(j.dump(-1, ' ', false, json::error_handler_t::replace));
}

// Names come from the file: long enough for real tensor names, capped for hostile ones.
std::string EchoName(std::string_view name) { return EchoForError(name, 128); }

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

// Parses one header entry; `data_size` bounds its offsets. `base` is the start of the data area.
absl::StatusOr<TensorInfo> ParseTensorEntry(const std::string& path, const std::string& name,
                                            const json& entry, const uint8_t* base,
                                            uint64_t data_size) {
  auto error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", EchoName(name), "': ", what));
  };
  if (!entry.is_object()) return error("header entry is not a JSON object");
  TensorInfo t;
  t.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return error("missing \"dtype\"");
  if (!dtype_it->is_string()) return error("\"dtype\" is not a string");
  const std::string dtype_name = dtype_it->get<std::string>();
  std::optional<DType> dtype = ParseDType(dtype_name);
  if (!dtype) {
    return error(absl::StrCat("unknown or unsupported dtype \"", EchoForError(dtype_name),
                              "\" (supported: F32, F16, BF16, I32, I64, U8)"));
  }
  t.dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return error("missing \"shape\"");
  if (!shape_it->is_array()) return error("\"shape\" is not a JSON array");
  for (const json& dim : *shape_it) {
    std::optional<uint64_t> d = AsNonNegativeInt(dim);
    if (!d || *d > static_cast<uint64_t>(INT64_MAX)) {
      return error(absl::StrCat("shape dim ", Describe(dim), " is not a non-negative integer"));
    }
    t.shape.push_back(static_cast<int64_t>(*d));
  }
  std::optional<size_t> nbytes = CheckedNumBytes(t.shape, DTypeSize(t.dtype));
  if (!nbytes) {
    return error(absl::StrCat("element count of shape ", ShapeString(t.shape), " overflows"));
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) return error("missing \"data_offsets\"");
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return error(absl::StrCat("\"data_offsets\" is not a list of two integers (",
                              Describe(*offsets_it), " of size ", offsets_it->size(), ")"));
  }
  const json& begin_json = (*offsets_it)[0];
  const json& end_json = (*offsets_it)[1];
  std::optional<uint64_t> begin = AsNonNegativeInt(begin_json);
  std::optional<uint64_t> end = AsNonNegativeInt(end_json);
  if (!begin || !end) {
    return error(absl::StrCat("\"data_offsets\" is not a list of two non-negative integers: [",
                              Describe(begin_json), ", ", Describe(end_json), "]"));
  }
  if (*begin > *end) {
    return error(absl::StrCat("data_offsets begin ", *begin, " > end ", *end));
  }
  if (*end > data_size) {
    return error(absl::StrCat("data_offsets end ", *end, " is beyond the data area (", data_size,
                              " bytes)"));
  }
  if (*end - *begin != *nbytes) {
    return error(absl::StrCat("data_offsets span ", *end - *begin, " bytes but ",
                              std::string(DTypeName(t.dtype)), " shape ", ShapeString(t.shape),
                              " needs ", *nbytes));
  }
  t.data = base + *begin;
  t.nbytes = *nbytes;
  return t;
}

// Reads a safetensors header in one pass of SAX events, keeping only the tensor table and the
// metadata; each entry is checked by ParseTensorEntry as soon as it closes, and reading stops at the
// first problem. (The DOM parser with a callback, used before, rescans the parent object after every
// child object: a header of n entries cost O(n^2), 40k entries took 31 s.) Nesting, list lengths and
// the entry count are bounded while reading, so a hostile header cannot make us build much.
class HeaderReader {
 public:
  HeaderReader(const std::string& path, const uint8_t* data, uint64_t data_size)
      : path_(path), data_(data), data_size_(data_size) {}

  const absl::Status& status() const { return status_; }
  std::vector<TensorInfo>& tensors() { return tensors_; }
  std::map<std::string, std::string>& metadata() { return metadata_; }

  // The nlohmann::json_sax interface.
  bool null() { return Value(json(nullptr)); }
  bool boolean(bool v) { return Value(json(v)); }
  bool number_integer(json::number_integer_t v) { return Value(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return Value(json(v)); }
  bool number_float(json::number_float_t v, const std::string&) { return Value(json(v)); }
  bool string(std::string& v) { return Value(json(std::move(v))); }
  bool binary(json::binary_t&) { return Fail(Invalid("header is not valid JSON")); }
  bool start_object(size_t) { return Value(json::object()); }
  bool start_array(size_t) { return Value(json::array()); }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }
  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception&) {
    return Fail(Invalid("header is not valid JSON"));
  }
  bool key(std::string& k) {
    // Metadata keys count too: the cap bounds everything the reader keeps.
    const bool kept = stack_.back() == Frame::kRoot || stack_.back() == Frame::kMetadata;
    if (kept && ++entries_ > kMaxSafetensorsEntries) {
      return Fail(Invalid(absl::StrCat("header has more than ", kMaxSafetensorsEntries, " entries")));
    }
    key_ = std::move(k);
    return true;
  }

 private:
  // What the innermost open container is.
  enum class Frame { kRoot, kEntry, kMetadata, kList, kSkip };

  absl::Status Invalid(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", what));
  }
  bool Fail(absl::Status s) {
    if (status_.ok()) status_ = std::move(s);
    return false;
  }
  bool Push(Frame f) {
    if (stack_.size() >= kMaxHeaderDepth) {
      return Fail(Invalid(absl::StrCat("header nests JSON deeper than ", kMaxHeaderDepth, " levels")));
    }
    stack_.push_back(f);
    return true;
  }

  // A scalar, or the start of an object or array (an empty one stands for it), in its context.
  bool Value(json v) {
    const bool opens = v.is_structured();
    if (stack_.empty()) {
      if (!v.is_object()) return Fail(Invalid("header is not a JSON object"));
      return Push(Frame::kRoot);
    }
    switch (stack_.back()) {
      case Frame::kRoot:
        if (key_ == kMetadataKey) {
          if (!v.is_object()) return Fail(Invalid("\"__metadata__\" is not a JSON object"));
          if (has_metadata_) return Fail(Invalid("header has duplicate key '__metadata__'"));
          has_metadata_ = true;
          return Push(Frame::kMetadata);
        }
        if (!v.is_object()) {  // ParseTensorEntry words the error
          return Fail(ParseTensorEntry(path_, key_, v, data_, data_size_).status());
        }
        entry_name_ = key_;
        entry_ = json::object();
        return Push(Frame::kEntry);
      case Frame::kEntry: {
        const bool field = key_ == "dtype" || key_ == "shape" || key_ == "data_offsets";
        if (!field) return opens ? Push(Frame::kSkip) : true;  // unknown fields are ignored
        const bool list = v.is_array() && key_ != "dtype";
        json& slot = entry_[key_];
        slot = std::move(v);
        if (list) {
          list_ = &slot;
          return Push(Frame::kList);
        }
        return opens ? Push(Frame::kSkip) : true;
      }
      case Frame::kMetadata:
        if (!v.is_string()) {
          return Fail(Invalid(absl::StrCat("\"__metadata__\" value of '", EchoName(key_),
                                           "' is not a string")));
        }
        metadata_[key_] = v.get<std::string>();
        return true;
      case Frame::kList:
        if (list_->size() >= kMaxListLength) {
          return Fail(Invalid(absl::StrCat("tensor '", EchoName(entry_name_), "': a list of more than ",
                                           kMaxListLength, " elements")));
        }
        list_->push_back(std::move(v));
        return opens ? Push(Frame::kSkip) : true;
      case Frame::kSkip:
        return opens ? Push(Frame::kSkip) : true;
    }
    return true;
  }

  bool Close() {
    const Frame f = stack_.back();
    stack_.pop_back();
    if (f == Frame::kList) list_ = nullptr;
    if (f != Frame::kEntry) return true;
    absl::StatusOr<TensorInfo> t = ParseTensorEntry(path_, entry_name_, entry_, data_, data_size_);
    if (!t.ok()) return Fail(t.status());
    tensors_.push_back(*std::move(t));
    return true;
  }

  const std::string& path_;
  const uint8_t* data_;
  uint64_t data_size_;
  absl::Status status_;
  std::vector<Frame> stack_;
  std::string key_;         // the latest key
  std::string entry_name_;  // the tensor entry being read
  json entry_;              // its dtype, shape and data_offsets
  json* list_ = nullptr;    // the shape or data_offsets list being filled
  int64_t entries_ = 0;
  bool has_metadata_ = false;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
    case DType::kU8:
      return "U8";
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
      return 2;
    case DType::kBF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
    case DType::kU8:
      return 1;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot open safetensors file ", path));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid("not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return invalid(
        absl::StrCat("file is ", file_size, " bytes, shorter than the 8-byte header length"));
  }

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return absl::ErrnoToStatus(mmap_errno, absl::StrCat("cannot mmap ", path));
  }
  file->map_ = map;
  file->map_size_ = file_size;
  RETURN_IF_ERROR(file->ParseHeader(static_cast<const uint8_t*>(map), file_size));
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(std::string bytes,
                                                                            std::string name) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = std::move(name);
  file->owned_ = std::move(bytes);
  if (file->owned_.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(file->path_, ": file is ", file->owned_.size(),
                                                   " bytes, shorter than the 8-byte header length"));
  }
  RETURN_IF_ERROR(file->ParseHeader(reinterpret_cast<const uint8_t*>(file->owned_.data()),
                                    file->owned_.size()));
  return file;
}

absl::Status SafetensorsFile::ParseHeader(const uint8_t* bytes, uint64_t file_size) {
  auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", what));
  };
  uint64_t header_len;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return invalid(absl::StrCat("header length ", header_len, " exceeds the ",
                                kMaxSafetensorsHeaderBytes, "-byte limit (not a safetensors file?)"));
  }
  if (header_len > file_size - 8) {
    return invalid(absl::StrCat("header length ", header_len, " is beyond the end of the file (",
                                file_size, " bytes)"));
  }
  const uint8_t* header_begin = bytes + 8;
  const uint8_t* data = header_begin + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  HeaderReader reader(path_, data, data_size);
  json::sax_parse(header_begin, data, &reader);
  RETURN_IF_ERROR(reader.status());
  tensors_ = std::move(reader.tensors());
  metadata_ = std::move(reader.metadata());

  // Find relies on name order; equal neighbours are a duplicated name (corruption).
  std::sort(tensors_.begin(), tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (size_t i = 1; i < tensors_.size(); ++i) {
    if (tensors_[i].name == tensors_[i - 1].name) {
      return invalid(absl::StrCat("header has duplicate key '", EchoName(tensors_[i].name), "'"));
    }
  }

  // Overlap check: sort non-empty tensors by start offset and compare neighbours.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : tensors_) {
    if (t.nbytes > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->data < b->data; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo* prev = by_offset[i - 1];
    const TensorInfo* cur = by_offset[i];
    if (cur->data < prev->data + prev->nbytes) {
      return invalid(absl::StrCat("tensors '", EchoName(prev->name), "' and '", EchoName(cur->name),
                                  "' overlap in the data area"));
    }
  }
  return absl::OkStatus();
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;  // +-0
    } else {
      // Subnormal: value = mant * 2^-24. Normalise so the leading 1 becomes implicit.
      uint32_t e = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --e;
      }
      bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN keeping its payload
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

float BF16ToF32(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

absl::Status CopyToF32(const TensorInfo& t, absl::Span<float> out) {
  const int64_t numel = t.numel();
  if (static_cast<int64_t>(out.size()) != numel) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': has ", numel,
                                                   " elements, output buffer has ", out.size()));
  }
  if (t.nbytes != static_cast<size_t>(numel) * DTypeSize(t.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': nbytes ", t.nbytes,
                                                   " does not match its shape and dtype"));
  }
  switch (t.dtype) {
    case DType::kF32:
      if (numel > 0) std::memcpy(out.data(), t.data, t.nbytes);
      return absl::OkStatus();
    case DType::kF16:
    case DType::kBF16: {
      const bool is_f16 = t.dtype == DType::kF16;
      for (int64_t i = 0; i < numel; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);  // data may be unaligned
        out[i] = is_f16 ? F16ToF32(h) : BF16ToF32(h);
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': dtype ",
                                                     std::string(DTypeName(t.dtype)),
                                                     " is not a float type"));
  }
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorInfo>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  std::set<std::string_view> names;
  for (const TensorInfo& t : tensors) {
    if (t.name.empty()) return invalid("tensor with an empty name");
    if (t.name == kMetadataKey) return invalid("tensor name \"__metadata__\" is reserved");
    if (!names.insert(t.name).second) {
      return invalid(absl::StrCat("duplicate tensor '", t.name, "'"));
    }
    std::optional<size_t> nbytes = CheckedNumBytes(t.shape, DTypeSize(t.dtype));
    if (!nbytes) {
      return invalid(absl::StrCat("tensor '", t.name, "': invalid shape ", ShapeString(t.shape)));
    }
    if (*nbytes != t.nbytes) {
      return invalid(absl::StrCat("tensor '", t.name, "': nbytes ", t.nbytes, " but ",
                                  std::string(DTypeName(t.dtype)), " shape ", ShapeString(t.shape),
                                  " needs ", *nbytes));
    }
    if (t.nbytes > 0 && t.data == nullptr) {
      return invalid(absl::StrCat("tensor '", t.name, "': null data"));
    }
  }

  // Largest elements first: with an 8-aligned data area every tensor is then aligned.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return DTypeSize(tensors[a].dtype) > DTypeSize(tensors[b].dtype);
  });
  json header = json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  uint64_t offset = 0;
  for (size_t i : order) {
    const TensorInfo& t = tensors[i];
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // spaces are the spec's padding
  const uint64_t header_len = header_text.size();

  const std::string tmp_path = absl::StrCat(path, ".tmp.", ::getpid());
  std::FILE* f = std::fopen(tmp_path.c_str(), "wb");
  if (f == nullptr) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot create ", tmp_path));
  }
  int write_errno = 0;  // first failure's errno; EIO if the call did not set one
  auto check = [&](bool call_ok) {
    if (!call_ok && write_errno == 0) write_errno = errno != 0 ? errno : EIO;
  };
  errno = 0;
  check(std::fwrite(&header_len, 8, 1, f) == 1);
  check(std::fwrite(header_text.data(), 1, header_text.size(), f) == header_text.size());
  for (size_t i : order) {
    const TensorInfo& t = tensors[i];
    if (write_errno == 0 && t.nbytes > 0) check(std::fwrite(t.data, 1, t.nbytes, f) == t.nbytes);
  }
  check(std::fflush(f) == 0);
  check(::fsync(::fileno(f)) == 0);  // the rename below must not expose unwritten data
  check(std::fclose(f) == 0);
  if (write_errno != 0) {
    std::remove(tmp_path.c_str());
    return absl::ErrnoToStatus(write_errno, absl::StrCat("cannot write ", tmp_path));
  }
  if (std::rename(tmp_path.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp_path.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat("cannot rename ", tmp_path, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace trams::engine
