// The container of a session snapshot (issue 10): a self-describing, versioned blob of named sections,
// each with its own xxHash3-64 checksum and optional zstd compression, and a checksum of the whole.
// It knows nothing of what the sections hold (settings, counters, pool tensors): the writers above it do.
//
// Layout (little-endian):
//   "TRAMSNAP" | u32 format version | u32 section count
//   per section: u16 name length | name | u8 codec (0 raw, 1 zstd) | u64 stored length | u64 raw length |
//                u64 xxh3-64 of the raw bytes | stored bytes
//   u64 xxh3-64 of everything before it (every format version ends so: it is checked before the version)
//
// Decoding checks everything before it allocates or trusts a length: a blob that is not a snapshot, is
// truncated or corrupt is DATA_LOSS saying what failed; a newer format version is FAILED_PRECONDITION;
// one that would decompress past the caller's bound is RESOURCE_EXHAUSTED.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace trams::engine {

inline constexpr uint32_t kSnapshotFormatVersion = 1;
inline constexpr size_t kMaxSnapshotSections = 256;
inline constexpr size_t kMaxSnapshotSectionName = 64;
// A section's raw bytes at most (a 4096-token pool of the WikiText-103 shape in f32 is about 430 MB).
inline constexpr uint64_t kMaxSnapshotSectionBytes = uint64_t{4} << 30;

struct SnapshotSection {
  std::string name;   // unique within a snapshot, 1..kMaxSnapshotSectionName bytes
  std::string bytes;  // raw (uncompressed) contents
  bool operator==(const SnapshotSection&) const = default;
};

enum class SnapshotCompression { kNone, kZstd };

// INVALID_ARGUMENT for a bad name, a repeated name, too many or too large sections.
absl::StatusOr<std::string> EncodeSnapshot(absl::Span<const SnapshotSection> sections,
                                           SnapshotCompression compression);
// `max_raw_bytes` bounds the raw bytes of all sections together, i.e. what decoding may allocate (a few
// bytes of zstd may declare gigabytes); past it the snapshot is RESOURCE_EXHAUSTED, before any allocation.
absl::StatusOr<std::vector<SnapshotSection>> DecodeSnapshot(absl::string_view blob,
                                                            uint64_t max_raw_bytes = kMaxSnapshotSectionBytes);

// The section named `name`, or nullptr.
const SnapshotSection* FindSnapshotSection(const std::vector<SnapshotSection>& sections, absl::string_view name);

}  // namespace trams::engine
