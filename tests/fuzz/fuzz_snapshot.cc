// libFuzzer target: DecodeSnapshot on arbitrary bytes never crashes, allocates at most what the blob
// justifies (deploy/fuzz.sh runs it under -rss_limit_mb), and what it accepts re-encodes to an equal snapshot.
// Inputs whose first byte is odd get a correct whole-blob checksum first, so that the fuzzer also reaches
// the section parser behind it (a random 64-bit checksum would almost never match).
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/snapshot_file.h"
#include "tests/fuzz/fuzz_check.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trams::engine;
  if (size == 0) return 0;
  std::string blob(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) != 0 && blob.size() >= 8) {
    const uint64_t h = XXH3_64bits(blob.data(), blob.size() - 8);
    for (int i = 0; i < 8; ++i) blob[blob.size() - 8 + i] = static_cast<char>((h >> (8 * i)) & 0xff);
  }
  // 64 MiB of decompressed sections at most: a few bytes of zstd may declare gigabytes.
  absl::StatusOr<std::vector<SnapshotSection>> sections = DecodeSnapshot(blob, uint64_t{64} << 20);
  if (!sections.ok()) {
    FUZZ_CHECK(sections.status().code() == absl::StatusCode::kDataLoss ||
               sections.status().code() == absl::StatusCode::kFailedPrecondition ||
               sections.status().code() == absl::StatusCode::kResourceExhausted);
    return 0;
  }
  for (SnapshotCompression c : {SnapshotCompression::kNone, SnapshotCompression::kZstd}) {
    absl::StatusOr<std::string> again = EncodeSnapshot(*sections, c);
    FUZZ_CHECK(again.ok());
    absl::StatusOr<std::vector<SnapshotSection>> back = DecodeSnapshot(*again);
    FUZZ_CHECK(back.ok() && *back == *sections);
  }
  return 0;
}
