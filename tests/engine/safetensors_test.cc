#include "engine/safetensors.h"

#include <sys/stat.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

std::string TempPath(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(::testing::TempDir(), "/st_", info->test_suite_name(), "_", info->name(), "_",
                      name);
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A safetensors file from a raw header and data area.
std::string RawFile(const std::string& header, const std::string& data) {
  const uint64_t len = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 8);
  return out + header + data;
}

std::string Bytes(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + 7 * i);
  return s;
}

TensorInfo MakeTensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                      const std::string& bytes) {
  TensorInfo t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = reinterpret_cast<const uint8_t*>(bytes.data());
  t.nbytes = bytes.size();
  return t;
}

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

TEST(DTypeTest, NamesAndSizes) {
  EXPECT_EQ(DTypeName(DType::kF32), "F32");
  EXPECT_EQ(DTypeName(DType::kF16), "F16");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kI32), "I32");
  EXPECT_EQ(DTypeName(DType::kI64), "I64");
  EXPECT_EQ(DTypeName(DType::kU8), "U8");
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI32), 4u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_EQ(DTypeSize(DType::kU8), 1u);
}

TEST(TensorInfoTest, Numel) {
  TensorInfo t;
  EXPECT_EQ(t.numel(), 1);  // scalar
  t.shape = {2, 3, 4};
  EXPECT_EQ(t.numel(), 24);
  t.shape = {5, 0};
  EXPECT_EQ(t.numel(), 0);
}

TEST(SafetensorsTest, RoundTripEveryDtype) {
  const std::vector<DType> dtypes = {DType::kU8,  DType::kF16, DType::kBF16,
                                     DType::kI32, DType::kF32, DType::kI64};
  std::vector<std::string> buffers;
  buffers.reserve(dtypes.size() + 2);
  std::vector<TensorInfo> tensors;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    // Odd element counts so a naive layout would misalign the wider dtypes after U8/F16.
    const std::vector<int64_t> shape = {3, static_cast<int64_t>(i) + 1};
    buffers.push_back(Bytes(3 * (i + 1) * DTypeSize(dtypes[i]), static_cast<uint8_t>(i)));
    tensors.push_back(MakeTensor(absl::StrCat("t", i, ".", std::string(DTypeName(dtypes[i]))),
                                 dtypes[i], shape, buffers.back()));
  }
  buffers.push_back(Bytes(4, 99));
  tensors.push_back(MakeTensor("scalar", DType::kF32, {}, buffers.back()));
  buffers.push_back("");
  tensors.push_back(MakeTensor("empty", DType::kI64, {4, 0, 2}, buffers.back()));

  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "ünïcode"}};
  const std::string path = TempPath("roundtrip.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, metadata).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->metadata(), metadata);
  ASSERT_EQ((*file)->tensors().size(), tensors.size());
  for (size_t i = 1; i < (*file)->tensors().size(); ++i) {
    EXPECT_LT((*file)->tensors()[i - 1].name, (*file)->tensors()[i].name);
  }
  for (const TensorInfo& want : tensors) {
    const TensorInfo* got = (*file)->Find(want.name);
    ASSERT_NE(got, nullptr) << want.name;
    EXPECT_EQ(got->name, want.name);
    EXPECT_EQ(got->dtype, want.dtype) << want.name;
    EXPECT_EQ(got->shape, want.shape) << want.name;
    EXPECT_EQ(got->numel(), want.numel()) << want.name;
    ASSERT_EQ(got->nbytes, want.nbytes) << want.name;
    if (want.nbytes > 0) {
      EXPECT_EQ(std::memcmp(got->data, want.data, want.nbytes), 0) << want.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(got->data) % DTypeSize(got->dtype), 0u)
          << want.name << " is not aligned";
    }
  }
  EXPECT_EQ((*file)->Find("missing"), nullptr);
  EXPECT_EQ((*file)->Find(""), nullptr);
}

TEST(SafetensorsTest, EmptyFileRoundTrip) {
  const std::string path = TempPath("empty.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}, {}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsTest, WriteOverwritesExistingFile) {
  const std::string path = TempPath("over.safetensors");
  const std::string a = Bytes(8, 1), b = Bytes(4, 2);
  ASSERT_TRUE(WriteSafetensors(path, {MakeTensor("a", DType::kI64, {1}, a)}, {}).ok());
  ASSERT_TRUE(WriteSafetensors(path, {MakeTensor("b", DType::kF32, {1}, b)}, {}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 1u);
  EXPECT_EQ((*file)->tensors()[0].name, "b");
}

// A hand-written file in the layout Python's safetensors produces, with a header length that
// leaves the data area unaligned.
TEST(SafetensorsTest, ReadsHandWrittenUnalignedFile) {
  const float values[3] = {1.5f, -2.0f, 1e-3f};
  std::string data(reinterpret_cast<const char*>(values), sizeof(values));
  const uint16_t halves[2] = {0x3c00, 0xc000};  // 1, -2
  data.append(reinterpret_cast<const char*>(halves), sizeof(halves));
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("h":{"shape":[1,2],"dtype":"F16","data_offsets":[12,16]}})";
  ASSERT_NE((8 + header.size()) % 4, 0u);
  const std::string path = TempPath("hand.safetensors");
  WriteBytes(path, RawFile(header, data));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const TensorInfo* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);
  std::vector<float> out(3);
  ASSERT_TRUE(CopyToF32(*w, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, std::vector<float>(values, values + 3));
  const TensorInfo* h = (*file)->Find("h");
  ASSERT_NE(h, nullptr);
  std::vector<float> out16(2);
  ASSERT_TRUE(CopyToF32(*h, absl::MakeSpan(out16)).ok());
  EXPECT_EQ(out16, (std::vector<float>{1.0f, -2.0f}));
}

TEST(ConversionTest, F16KnownBitPatterns) {
  EXPECT_EQ(Bits(F16ToF32(0x0000)), 0x00000000u);  // +0
  EXPECT_EQ(Bits(F16ToF32(0x8000)), 0x80000000u);  // -0
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x3555), 0.333251953125f);
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);               // largest normal
  EXPECT_EQ(F16ToF32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(F16ToF32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(F16ToF32(0x0200), std::ldexp(1.0f, -15));
  EXPECT_EQ(F16ToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_EQ(Bits(F16ToF32(0x7e00)), 0x7fc00000u);  // canonical quiet NaN
  EXPECT_EQ(Bits(F16ToF32(0x7c01)), 0x7f802000u);  // signalling NaN payload kept
  EXPECT_EQ(Bits(F16ToF32(0xfe00)), 0xffc00000u);
}

// Every f16 value against the definition: (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m if e == 0.
TEST(ConversionTest, F16Exhaustive) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const bool negative = h & 0x8000;
    const int exp = (h >> 10) & 0x1f;
    const int mant = h & 0x3ff;
    const float got = F16ToF32(static_cast<uint16_t>(h));
    ASSERT_EQ(std::signbit(got), negative) << h;
    if (exp == 0x1f) {
      ASSERT_EQ(std::isnan(got), mant != 0) << h;
      if (mant == 0) {
        ASSERT_TRUE(std::isinf(got)) << h;
      }
      continue;
    }
    const double magnitude = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
    ASSERT_EQ(static_cast<double>(got), negative ? -magnitude : magnitude) << h;
  }
}

TEST(ConversionTest, BF16KnownBitPatterns) {
  EXPECT_EQ(BF16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(BF16ToF32(0xc049), -3.140625f);
  EXPECT_EQ(Bits(BF16ToF32(0x0000)), 0x00000000u);
  EXPECT_EQ(Bits(BF16ToF32(0x8000)), 0x80000000u);  // -0
  EXPECT_EQ(Bits(BF16ToF32(0x0001)), 0x00010000u);  // subnormal
  EXPECT_EQ(BF16ToF32(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(BF16ToF32(0xff80), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bits(BF16ToF32(0x7fc1)), 0x7fc10000u);  // NaN payload kept
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    ASSERT_EQ(Bits(BF16ToF32(static_cast<uint16_t>(b))), b << 16);
  }
}

TEST(ConversionTest, CopyToF32FromFile) {
  const uint16_t f16[4] = {0x3c00, 0x8000, 0x0001, 0x7c00};
  const uint16_t bf16[4] = {0x3f80, 0x8000, 0x0001, 0xff80};
  const float f32[4] = {0.25f, -0.0f, 3.0e38f, -7.0f};
  const std::string f16_bytes(reinterpret_cast<const char*>(f16), sizeof(f16));
  const std::string bf16_bytes(reinterpret_cast<const char*>(bf16), sizeof(bf16));
  const std::string f32_bytes(reinterpret_cast<const char*>(f32), sizeof(f32));
  const std::string i32_bytes = Bytes(16, 3);
  const std::string path = TempPath("convert.safetensors");
  ASSERT_TRUE(WriteSafetensors(path,
                               {MakeTensor("f16", DType::kF16, {2, 2}, f16_bytes),
                                MakeTensor("bf16", DType::kBF16, {4}, bf16_bytes),
                                MakeTensor("f32", DType::kF32, {4, 1}, f32_bytes),
                                MakeTensor("i32", DType::kI32, {4}, i32_bytes)},
                               {})
                  .ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> out(4);

  ASSERT_TRUE(CopyToF32(*(*file)->Find("f16"), absl::MakeSpan(out)).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(Bits(out[1]), 0x80000000u);
  EXPECT_EQ(out[2], std::ldexp(1.0f, -24));
  EXPECT_EQ(out[3], std::numeric_limits<float>::infinity());

  ASSERT_TRUE(CopyToF32(*(*file)->Find("bf16"), absl::MakeSpan(out)).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(Bits(out[1]), 0x80000000u);
  EXPECT_EQ(Bits(out[2]), 0x00010000u);
  EXPECT_EQ(out[3], -std::numeric_limits<float>::infinity());

  ASSERT_TRUE(CopyToF32(*(*file)->Find("f32"), absl::MakeSpan(out)).ok());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Bits(out[i]), Bits(f32[i])) << i;

  absl::Status s = CopyToF32(*(*file)->Find("i32"), absl::MakeSpan(out));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          AllOf(HasSubstr("i32"), HasSubstr("not a float type"))));

  std::vector<float> wrong(3);
  s = CopyToF32(*(*file)->Find("f16"), absl::MakeSpan(wrong));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("has 4 elements, output buffer has 3")));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  auto file = SafetensorsFile::Open(TempPath("does_not_exist.safetensors"));
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status(), StatusIs(absl::StatusCode::kNotFound, HasSubstr("does_not_exist.safetensors")));
}

TEST(SafetensorsTest, DirectoryIsRejected) {
  const std::string dir = TempPath("dir");
  ::mkdir(dir.c_str(), 0755);
  auto file = SafetensorsFile::Open(dir);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a regular file")));
}

struct CorruptCase {
  std::string label;
  std::string bytes;    // the whole file
  std::string message;  // expected substring
  std::string tensor;   // the tensor the message must name ("" = none)
};

std::vector<CorruptCase> CorruptCases() {
  const std::string f32x2 = Bytes(8, 1);
  auto one = [&](const std::string& entry, const std::string& data) {
    return RawFile(absl::StrCat(R"({"w":)", entry, "}"), data);
  };
  std::string absurd(8, '\0');
  const uint64_t big = 200ull << 20;
  std::memcpy(absurd.data(), &big, 8);
  std::string beyond(8, '\0');
  const uint64_t len = 1000;
  std::memcpy(beyond.data(), &len, 8);
  beyond += "{}";
  std::string huge_len(8, '\xff');
  huge_len += "{}";
  std::string dims64;  // appended to a first dim: 65 dims of 1
  for (int i = 0; i < 64; ++i) dims64 += ",1";
  return {
      {"empty file", "", "shorter than the 8-byte header length", ""},
      {"7 bytes", std::string(7, '\0'), "file is 7 bytes", ""},
      {"absurd header length", absurd + "{}", "exceeds the", ""},
      {"max header length", huge_len, "exceeds the", ""},
      {"header beyond file", beyond, "beyond the end of the file", ""},
      {"empty header", RawFile("", ""), "not valid JSON", ""},
      {"header not JSON", RawFile("{\"w\": ", f32x2), "not valid JSON", ""},
      {"header trailing garbage", RawFile("{}x", ""), "not valid JSON", ""},
      {"header invalid UTF-8", RawFile("{\"w\xff\":{}}", ""), "not valid JSON", ""},
      {"header is an array", RawFile("[1, 2]", ""), "not a JSON object", ""},
      {"header is a string", RawFile("\"abc\"", ""), "not a JSON object", ""},
      {"entry not an object", one("5", f32x2), "header entry is not a JSON object", "w"},
      {"unknown dtype", one(R"({"dtype":"F64","shape":[1],"data_offsets":[0,8]})", f32x2),
       "unknown or unsupported dtype \"F64\"", "w"},
      {"bogus dtype", one(R"({"dtype":"float","shape":[2],"data_offsets":[0,8]})", f32x2),
       "unknown or unsupported dtype", "w"},
      {"dtype not a string", one(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})", f32x2),
       "\"dtype\" is not a string", "w"},
      {"missing dtype", one(R"({"shape":[2],"data_offsets":[0,8]})", f32x2), "missing \"dtype\"",
       "w"},
      {"missing shape", one(R"({"dtype":"F32","data_offsets":[0,8]})", f32x2), "missing \"shape\"",
       "w"},
      {"shape not a list", one(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})", f32x2),
       "\"shape\" is not a JSON array", "w"},
      {"negative dim", one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", f32x2),
       "shape dim -2 is not a non-negative integer", "w"},
      {"float dim", one(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})", f32x2),
       "is not a non-negative integer", "w"},
      {"string dim", one(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})", f32x2),
       "is not a non-negative integer", "w"},
      {"dim beyond int64",
       one(R"({"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,8]})", f32x2),
       "is not a non-negative integer", "w"},
      {"numel overflow",
       one(R"({"dtype":"U8","shape":[4294967296,4294967296,4],"data_offsets":[0,8]})", f32x2),
       "overflows", "w"},
      {"nbytes overflow",
       one(R"({"dtype":"I64","shape":[4611686018427387904],"data_offsets":[0,8]})", f32x2),
       "overflows", "w"},
      // Hostile nesting must not overflow the stack (json::dump and friends recurse).
      {"deeply nested shape",
       one(absl::StrCat(R"({"dtype":"F32","shape":[)", std::string(100000, '['),
                        std::string(100000, ']'), R"(],"data_offsets":[0,8]})"),
           f32x2),
       "header nests JSON deeper than 8 levels", ""},
      {"nested shape dim", one(R"({"dtype":"F32","shape":[[2]],"data_offsets":[0,8]})", f32x2),
       "shape dim array is not a non-negative integer", "w"},
      {"missing data_offsets", one(R"({"dtype":"F32","shape":[2]})", f32x2),
       "missing \"data_offsets\"", "w"},
      {"one offset", one(R"({"dtype":"F32","shape":[2],"data_offsets":[8]})", f32x2),
       "not a list of two integers", "w"},
      {"three offsets", one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})", f32x2),
       "not a list of two integers", "w"},
      {"offsets not a list", one(R"({"dtype":"F32","shape":[2],"data_offsets":8})", f32x2),
       "not a list of two integers", "w"},
      {"string offsets", one(R"({"dtype":"F32","shape":[2],"data_offsets":["0","8"]})", f32x2),
       "not a list of two non-negative integers", "w"},
      {"negative offset", one(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})", f32x2),
       "not a list of two non-negative integers", "w"},
      {"begin after end", one(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})", f32x2),
       "data_offsets begin 8 > end 4", "w"},
      {"end beyond data", one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,12]})", f32x2),
       "end 12 is beyond the data area (8 bytes)", "w"},
      {"huge end",
       one(R"({"dtype":"F32","shape":[2],)"
           R"("data_offsets":[18446744073709551608,18446744073709551615]})",
           f32x2),
       "is beyond the data area", "w"},
      {"size mismatch", one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,8]})", f32x2),
       "data_offsets span 8 bytes but F32 shape [1] needs 4", "w"},
      {"overlap",
       RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
               R"("b":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}})",
               f32x2),
       "tensors 'a' and 'b' overlap", ""},
      {"same range",
       RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
               R"("b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
               f32x2),
       "overlap", ""},
      {"duplicate tensor",
       RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
               R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
               f32x2),
       "duplicate key 'w'", "w"},
      {"shape of 65 dims",
       one(absl::StrCat(R"({"dtype":"U8","shape":[1)", dims64, R"(],"data_offsets":[0,1]})"), "x"),
       "a list of more than 64 elements", "w"},
      {"duplicate metadata", RawFile(R"({"__metadata__":{},"__metadata__":{}})", ""),
       "duplicate key '__metadata__'", ""},
      {"metadata not an object", RawFile(R"({"__metadata__":[1]})", ""),
       "\"__metadata__\" is not a JSON object", ""},
      {"metadata value not a string", RawFile(R"({"__metadata__":{"epoch":3}})", ""),
       "\"__metadata__\" value of 'epoch' is not a string", ""},
  };
}

TEST(SafetensorsTest, CorruptFilesGiveUsefulErrors) {
  int index = 0;
  for (const CorruptCase& c : CorruptCases()) {
    SCOPED_TRACE(c.label);
    const std::string path = TempPath(absl::StrCat("corrupt", index++, ".safetensors"));
    WriteBytes(path, c.bytes);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    const std::string message(file.status().message());
    EXPECT_THAT(std::string(message), HasSubstr(c.message));
    EXPECT_THAT(std::string(message), HasSubstr(path));
    if (!c.tensor.empty()) {
      EXPECT_THAT(std::string(message), HasSubstr("'" + c.tensor + "'"));
    }
  }
}

std::string SmallValidFile(const std::string& path) {
  const std::string a = Bytes(12, 5), b = Bytes(6, 9), c = Bytes(3, 11);
  EXPECT_TRUE(WriteSafetensors(
                  path,
                  {MakeTensor("a", DType::kF32, {3}, a), MakeTensor("b", DType::kBF16, {1, 3}, b),
                   MakeTensor("c", DType::kU8, {3}, c)},
                  {{"k", "v"}})
                  .ok());
  return ReadBytes(path);
}

// The same checks on bytes held in memory; the name stands for the path.
TEST(SafetensorsTest, FromBytesMatchesOpen) {
  const std::string path = TempPath("valid.safetensors");
  const std::string bytes = SmallValidFile(path);
  auto mapped = SafetensorsFile::Open(path);
  auto held = SafetensorsFile::FromBytes(bytes, "in-memory");
  ASSERT_TRUE(mapped.ok() && held.ok()) << held.status();
  EXPECT_EQ((*held)->path(), "in-memory");
  EXPECT_EQ((*held)->metadata(), (*mapped)->metadata());
  ASSERT_EQ((*held)->tensors().size(), (*mapped)->tensors().size());
  for (size_t i = 0; i < (*held)->tensors().size(); ++i) {
    const TensorInfo& a = (*held)->tensors()[i];
    const TensorInfo& b = (*mapped)->tensors()[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.shape, b.shape);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(a.data), a.nbytes),
              std::string(reinterpret_cast<const char*>(b.data), b.nbytes));
  }
  for (const CorruptCase& c : CorruptCases()) {
    auto file = SafetensorsFile::FromBytes(c.bytes, "in-memory");
    ASSERT_FALSE(file.ok()) << c.label;
    EXPECT_THAT(std::string(file.status().message()), HasSubstr("in-memory: ")) << c.label;
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(c.message)) << c.label;
  }
}

// What a message quotes from the file is capped and printable (messages reach clients and logs).
TEST(SafetensorsTest, MessagesEscapeAndCapFileContent) {
  const std::string name = "\\u001b[2J" + std::string(1000, 'n');  // JSON for ESC [2J nnn...
  const std::string bytes = RawFile(absl::StrCat("{\"", name, R"(":{"dtype":"\u0007)", std::string(1000, 'd'),
                                                 R"(","shape":[2],"data_offsets":[0,8]}})"),
                                    Bytes(8, 1));
  auto file = SafetensorsFile::FromBytes(bytes, "f");
  ASSERT_FALSE(file.ok());
  const std::string message(file.status().message());
  EXPECT_THAT(std::string(message), HasSubstr("unknown or unsupported dtype"));
  EXPECT_THAT(std::string(message), HasSubstr("tensor '\\x1b[2Jnnn"));
  EXPECT_THAT(std::string(message), HasSubstr("\\x07ddd"));
  EXPECT_THAT(std::string(message), HasSubstr("(1004 bytes)"));
  EXPECT_THAT(std::string(message), HasSubstr("(1001 bytes)"));
  EXPECT_EQ(message.find('\x1b'), std::string::npos) << "raw escape byte in the message";
  EXPECT_LT(message.size(), 400u);
}

// Zero-size tensors occupy no bytes, so they may share offsets with anything.
TEST(SafetensorsTest, ZeroSizeTensorsDoNotOverlap) {
  const std::string path = TempPath("zero.safetensors");
  WriteBytes(path, RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
                           R"("c":{"dtype":"I64","shape":[0],"data_offsets":[8,8]}})",
                           Bytes(8, 0)));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("b")->nbytes, 0u);
}

TEST(SafetensorsTest, EveryTruncationIsAnError) {
  const std::string valid = SmallValidFile(TempPath("valid.safetensors"));
  ASSERT_GT(valid.size(), 8u);
  const std::string path = TempPath("truncated.safetensors");
  for (size_t n = 0; n < valid.size(); ++n) {
    WriteBytes(path, valid.substr(0, n));
    auto file = SafetensorsFile::Open(path);
    EXPECT_FALSE(file.ok()) << "truncated to " << n << " of " << valid.size() << " bytes";
    if (!file.ok()) {
      EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << n;
    }
  }
  WriteBytes(path, valid);
  EXPECT_TRUE(SafetensorsFile::Open(path).ok());
}

// Not an exhaustive fuzzer: every header byte replaced by a few values must either open (and then
// stay inside the mapping) or fail cleanly.
TEST(SafetensorsTest, HeaderByteFlipsNeverCrash) {
  const std::string valid = SmallValidFile(TempPath("valid.safetensors"));
  uint64_t header_len;
  std::memcpy(&header_len, valid.data(), 8);
  const std::string path = TempPath("flipped.safetensors");
  for (size_t pos = 0; pos < 8 + header_len; ++pos) {
    for (char value : {'\0', '"', '9', '-', '}', ']', '\xff'}) {
      std::string bytes = valid;
      bytes[pos] = value;
      WriteBytes(path, bytes);
      auto file = SafetensorsFile::Open(path);
      if (!file.ok()) continue;
      for (const TensorInfo& t : (*file)->tensors()) {
        ASSERT_EQ(t.nbytes, static_cast<size_t>(t.numel()) * DTypeSize(t.dtype));
        uint64_t sum = 0;  // touch every byte: must stay inside the mapping
        for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
        (void)sum;
      }
    }
  }
}

TEST(WriteSafetensorsTest, RejectsBadInput) {
  const std::string four = Bytes(4, 0);
  const std::string path = TempPath("bad.safetensors");
  struct Case {
    std::vector<TensorInfo> tensors;
    std::string message;
  };
  std::vector<Case> cases = {
      {{MakeTensor("a", DType::kF32, {1}, four), MakeTensor("a", DType::kU8, {4}, four)},
       "duplicate tensor 'a'"},
      {{MakeTensor("a", DType::kF32, {2}, four)}, "tensor 'a': nbytes 4 but F32 shape [2] needs 8"},
      {{MakeTensor("a", DType::kF32, {-1}, four)}, "tensor 'a': invalid shape [-1]"},
      {{MakeTensor("", DType::kF32, {1}, four)}, "empty name"},
      {{MakeTensor("__metadata__", DType::kF32, {1}, four)}, "reserved"},
  };
  TensorInfo null_data = MakeTensor("n", DType::kU8, {4}, four);
  null_data.data = nullptr;
  cases.push_back({{null_data}, "tensor 'n': null data"});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    absl::Status s = WriteSafetensors(path, c.tensors, {});
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
  }
}

TEST(WriteSafetensorsTest, UnwritableDirectory) {
  absl::Status s = WriteSafetensors(TempPath("no_such_dir/x.safetensors"), {}, {});
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("no_such_dir"));
}

}  // namespace
}  // namespace trams::engine
