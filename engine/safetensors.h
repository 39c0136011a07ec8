// Reader and writer for the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N, N bytes
// of JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data area the offsets are relative to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace trams::engine {

enum class DType { kF32, kF16, kBF16, kI32, kI64, kU8 };

// Limits on what Open accepts, checked while the header is parsed (before anything is built):
// the format's own 100 MB header cap, and at most 2^20 entries (tensors plus metadata keys). Our
// largest models have a few hundred tensors and the biggest public checkpoints a few tens of
// thousands, so 2^20 is generous; it bounds the tables kept (about 100 bytes per entry) whatever a
// 100 MB header claims.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;
constexpr int64_t kMaxSafetensorsEntries = int64_t{1} << 20;

// The safetensors spelling: "F32", "F16", "BF16", "I32", "I64", "U8".
std::string_view DTypeName(DType dtype);
// Bytes per element.
size_t DTypeSize(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // [] is a scalar (one element)
  // Little-endian element data. Not necessarily aligned for the dtype (safetensors does not
  // require it), so read it with memcpy or CopyToF32, not through a cast pointer.
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  // Product of the dims (1 for a scalar). Opened files guarantee it does not overflow.
  int64_t numel() const;
};

// A read-only mmap of a .safetensors file. Open validates the whole header, so every TensorInfo
// it hands out lies inside the mapping and has nbytes == numel * DTypeSize(dtype).
// The file must not be truncated while open (the mapping would fault).
class SafetensorsFile {
 public:
  // NotFound for a missing file; InvalidArgument, naming the path and tensor, for a corrupt one.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // The same checks on a file's bytes held in memory (fuzzing, tests); `name` stands for the path
  // in messages. The TensorInfo data points into the moved-in buffer.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(std::string bytes, std::string name);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();  // munmap

  // nullptr if absent.
  const TensorInfo* Find(std::string_view name) const;
  // Sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The "__metadata__" entry (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  // Reads the header of the file's `size` bytes at `bytes` (the mapping or owned_).
  absl::Status ParseHeader(const uint8_t* bytes, uint64_t size);

  std::string path_;
  std::string owned_;  // FromBytes' buffer (empty for a mapped file)
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Converts a float tensor (F32/F16/BF16) to f32, exactly (f16 subnormals, infinities and NaNs
// included). InvalidArgument for other dtypes or if out.size() != numel.
absl::Status CopyToF32(const TensorInfo& t, absl::Span<float> out);

// Single-value conversions used by CopyToF32 (exposed for tests).
float F16ToF32(uint16_t bits);
float BF16ToF32(uint16_t bits);

// Writes tensors (their name, dtype, shape, data, nbytes) and string metadata to `path`.
// The file is written to a temporary sibling and renamed, so readers never see a partial file.
// The data area starts 8-byte aligned and tensors are laid out by decreasing element size, so
// every tensor of the written file is aligned for its dtype.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorInfo>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace trams::engine
