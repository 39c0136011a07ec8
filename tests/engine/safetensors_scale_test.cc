// Headers with very many entries: parsing must stay linear in the header size (a 200k-entry header
// took forever with a quadratic parse), and past the entry cap the file is refused without building
// anything. Runs as its own executable so ctest can give it a generous TIMEOUT (tests/CMakeLists.txt).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

std::string TempPath(const std::string& name) { return absl::StrCat(::testing::TempDir(), "/st_scale_", name); }

void WriteFile(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t len = header.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << header << std::string(data_bytes, '\x01');
  ASSERT_TRUE(out.good()) << path;
}

// `n` one-byte U8 tensors "t<i>" laid end to end.
std::string ManyEntries(int64_t n) {
  std::string h = "{";
  for (int64_t i = 0; i < n; ++i) {
    absl::StrAppend(&h, i ? "," : "", "\"t", i, R"(":{"dtype":"U8","shape":[1],"data_offsets":[)", i, ",",
                    i + 1, "]}");
  }
  return h + "}";
}

TEST(SafetensorsScaleTest, TwoHundredThousandEntriesOpen) {
  constexpr int64_t kEntries = 200000;
  const std::string path = TempPath("many.safetensors");
  WriteFile(path, ManyEntries(kEntries), kEntries);
  const auto start = std::chrono::steady_clock::now();
  auto file = SafetensorsFile::Open(path);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ scale ] %lld entries opened in %.3f s\n", static_cast<long long>(kEntries), seconds);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), static_cast<size_t>(kEntries));
  const TensorInfo* last = (*file)->Find(absl::StrCat("t", kEntries - 1));
  ASSERT_NE(last, nullptr);
  EXPECT_EQ(last->nbytes, 1u);
}

TEST(SafetensorsScaleTest, TooManyEntriesAreRefusedByCount) {
  // Zero-size tensors (the smallest valid entries, about 50 bytes each): the entry past the cap is
  // refused while the header is read, before the table grows further.
  const int64_t n = kMaxSafetensorsEntries + 1;
  std::string h = "{";
  for (int64_t i = 0; i < n; ++i) {
    absl::StrAppend(&h, i ? "," : "", "\"", i, R"(":{"dtype":"U8","shape":[0],"data_offsets":[0,0]})");
  }
  h += "}";
  const std::string path = TempPath("too_many.safetensors");
  WriteFile(path, h, 0);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                      HasSubstr(absl::StrCat("more than ", kMaxSafetensorsEntries, " entries"))));
}

TEST(SafetensorsScaleTest, MetadataKeysCountAsEntries) {
  std::string h = R"({"__metadata__":{)";
  for (int64_t i = 0; i <= kMaxSafetensorsEntries; ++i) absl::StrAppend(&h, i ? "," : "", "\"", i, "\":\"\"");
  h += "}}";
  const std::string path = TempPath("many_metadata.safetensors");
  WriteFile(path, h, 0);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_NE(file.status().message().find(absl::StrCat("more than ", kMaxSafetensorsEntries, " entries")),
            std::string::npos)
      << file.status();
}

}  // namespace
}  // namespace trams::engine
