// Any bytes as a .safetensors file: Open either refuses them or hands out tensors that lie inside
// the buffer with nbytes == numel * dtype size, sorted and findable by name; float ones convert.
#include <cstdint>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trams;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  auto file = engine::SafetensorsFile::FromBytes(bytes, "fuzz");
  if (!file.ok()) return 0;
  const std::vector<engine::TensorInfo>& tensors = (*file)->tensors();
  FUZZ_CHECK(static_cast<int64_t>(tensors.size()) <= engine::kMaxSafetensorsEntries);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const engine::TensorInfo& t = tensors[i];
    FUZZ_CHECK(t.nbytes == static_cast<size_t>(t.numel()) * engine::DTypeSize(t.dtype));
    FUZZ_CHECK(t.nbytes <= size);
    FUZZ_CHECK((*file)->Find(t.name) == &t);
    if (i > 0) FUZZ_CHECK(tensors[i - 1].name < t.name);
    unsigned sum = 0;  // ASan flags any byte outside the buffer
    for (size_t b = 0; b < t.nbytes; ++b) sum += t.data[b];
    (void)sum;
    if (t.dtype == engine::DType::kF32 || t.dtype == engine::DType::kF16 || t.dtype == engine::DType::kBF16) {
      std::vector<float> out(static_cast<size_t>(t.numel()));
      FUZZ_CHECK(engine::CopyToF32(t, absl::MakeSpan(out)).ok());
    }
  }
  return 0;
}
