#include "engine/snapshot_file.h"

#include <zstd.h>

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

#define XXH_INLINE_ALL  // header-only: no run-time library to ship
#include <xxhash.h>

namespace trams::engine {
namespace {

constexpr char kMagic[8] = {'T', 'R', 'A', 'M', 'S', 'N', 'A', 'P'};
constexpr uint8_t kRaw = 0, kZstd = 1;
constexpr int kZstdLevel = 1;  // fastest: pools of floats gain little from more (bench/README.md, "Snapshots")

uint64_t Hash(absl::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

template <typename T>
void Put(std::string* out, T v) {
  char b[sizeof(T)];
  for (size_t i = 0; i < sizeof(T); ++i) b[i] = static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff);
  out->append(b, sizeof(T));
}

// Reads little-endian fields off the front of a blob; every read is bounds-checked.
class Reader {
 public:
  explicit Reader(absl::string_view data) : data_(data) {}
  size_t remaining() const { return data_.size() - at_; }
  size_t offset() const { return at_; }
  template <typename T>
  bool Get(T* v) {
    if (remaining() < sizeof(T)) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) x |= static_cast<uint64_t>(static_cast<uint8_t>(data_[at_ + i])) << (8 * i);
    at_ += sizeof(T);
    *v = static_cast<T>(x);
    return true;
  }
  bool Bytes(size_t n, absl::string_view* out) {
    if (remaining() < n) return false;
    *out = data_.substr(at_, n);
    at_ += n;
    return true;
  }

 private:
  absl::string_view data_;
  size_t at_ = 0;
};

absl::Status Lost(absl::string_view what) { return absl::DataLossError(absl::StrCat("snapshot: ", what)); }

}  // namespace

absl::StatusOr<std::string> EncodeSnapshot(absl::Span<const SnapshotSection> sections,
                                           SnapshotCompression compression) {
  if (sections.size() > kMaxSnapshotSections) {
    return absl::InvalidArgumentError(
        absl::StrCat("a snapshot holds at most ", kMaxSnapshotSections, " sections, got ", sections.size()));
  }
  std::set<absl::string_view> names;
  size_t raw_total = sizeof(kMagic) + 16;
  for (const SnapshotSection& s : sections) raw_total += 2 + s.name.size() + 25 + s.bytes.size();
  std::string out;
  out.reserve(raw_total);  // one allocation: the blob is at most the raw sections plus their headers
  out.append(kMagic, sizeof(kMagic));
  Put<uint32_t>(&out, kSnapshotFormatVersion);
  Put<uint32_t>(&out, static_cast<uint32_t>(sections.size()));
  for (const SnapshotSection& s : sections) {
    if (s.name.empty() || s.name.size() > kMaxSnapshotSectionName) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot section names are 1-", kMaxSnapshotSectionName,
                                                     " bytes, got ", s.name.size()));
    }
    if (!names.insert(s.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot section '", s.name, "' given twice"));
    }
    if (s.bytes.size() > kMaxSnapshotSectionBytes) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot section '", s.name, "' has ", s.bytes.size(),
                                                     " bytes, more than the limit of ", kMaxSnapshotSectionBytes));
    }
    std::string stored;
    uint8_t codec = kRaw;
    if (compression == SnapshotCompression::kZstd && !s.bytes.empty()) {
      stored.resize(ZSTD_compressBound(s.bytes.size()));
      const size_t n = ZSTD_compress(stored.data(), stored.size(), s.bytes.data(), s.bytes.size(), kZstdLevel);
      if (ZSTD_isError(n)) {
        return absl::InternalError(absl::StrCat("zstd could not compress section '", s.name, "': ",
                                                ZSTD_getErrorName(n)));
      }
      stored.resize(n);
      codec = kZstd;
      if (stored.size() >= s.bytes.size()) codec = kRaw;  // incompressible: keep it raw
    }
    const absl::string_view body = codec == kZstd ? absl::string_view(stored) : absl::string_view(s.bytes);
    Put<uint16_t>(&out, static_cast<uint16_t>(s.name.size()));
    out += s.name;
    Put<uint8_t>(&out, codec);
    Put<uint64_t>(&out, body.size());
    Put<uint64_t>(&out, s.bytes.size());
    Put<uint64_t>(&out, Hash(s.bytes));
    out.append(body.data(), body.size());
  }
  Put<uint64_t>(&out, Hash(out));
  return out;
}

absl::StatusOr<std::vector<SnapshotSection>> DecodeSnapshot(absl::string_view blob, uint64_t max_raw_bytes) {
  if (blob.size() < sizeof(kMagic) || std::memcmp(blob.data(), kMagic, sizeof(kMagic)) != 0) {
    return Lost("not a trams snapshot (no TRAMSNAP magic)");
  }
  // The whole-blob checksum first (every format version ends with it): after it, a bad field means a
  // writer bug, not a damaged copy, and a version number can be believed.
  if (blob.size() < sizeof(kMagic) + 8 + sizeof(uint64_t)) return Lost("truncated in the header");
  const absl::string_view covered = blob.substr(0, blob.size() - sizeof(uint64_t));
  Reader tail(blob.substr(covered.size()));
  uint64_t whole = 0;
  tail.Get(&whole);
  if (Hash(covered) != whole) return Lost("checksum mismatch: the snapshot is truncated or corrupt");
  Reader r(covered.substr(sizeof(kMagic)));
  uint32_t version = 0, count = 0;
  r.Get(&version);
  r.Get(&count);
  if (version > kSnapshotFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot format version ", version, "; this server reads ",
                                                      kSnapshotFormatVersion, ": restore it with a newer server"));
  }
  if (version != kSnapshotFormatVersion) return Lost(absl::StrCat("unknown format version ", version));
  if (count > kMaxSnapshotSections) {
    return Lost(absl::StrCat(count, " sections, more than the limit of ", kMaxSnapshotSections));
  }
  Reader body(covered.substr(sizeof(kMagic) + 8));
  std::vector<SnapshotSection> out;
  std::set<std::string> names;
  uint64_t raw_total = 0;
  for (uint32_t i = 0; i < count; ++i) {
    uint16_t name_len = 0;
    absl::string_view name;
    uint8_t codec = 0;
    uint64_t stored_len = 0, raw_len = 0, hash = 0;
    if (!body.Get(&name_len) || !body.Bytes(name_len, &name) || !body.Get(&codec) || !body.Get(&stored_len) ||
        !body.Get(&raw_len) || !body.Get(&hash)) {
      return Lost(absl::StrCat("truncated in the header of section ", i));
    }
    if (name.empty() || name.size() > kMaxSnapshotSectionName || !names.insert(std::string(name)).second) {
      return Lost(absl::StrCat("section ", i, " has an empty, too long or repeated name"));
    }
    const std::string label = absl::StrCat("section ", i, " '", name, "'");
    if (raw_len > kMaxSnapshotSectionBytes || stored_len > body.remaining() ||
        (codec == kRaw && stored_len != raw_len)) {
      return Lost(absl::StrCat(label, " declares ", stored_len, " stored / ", raw_len, " raw bytes, but ",
                               body.remaining(), " remain"));
    }
    raw_total += raw_len;  // both at most 4 GiB x 256 sections: no overflow
    if (raw_total > max_raw_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("snapshot: ", label, " brings its raw bytes to ", raw_total,
                                                       ", more than the ", max_raw_bytes, " allowed here"));
    }
    absl::string_view stored;
    body.Bytes(stored_len, &stored);
    SnapshotSection s;
    s.name = std::string(name);
    if (codec == kRaw) {
      s.bytes = std::string(stored);
    } else if (codec == kZstd) {
      const unsigned long long frame = ZSTD_getFrameContentSize(stored.data(), stored.size());
      if (frame != raw_len) return Lost(absl::StrCat(label, ": the zstd frame does not declare ", raw_len, " bytes"));
      s.bytes.resize(raw_len);
      const size_t n = ZSTD_decompress(s.bytes.data(), s.bytes.size(), stored.data(), stored.size());
      if (ZSTD_isError(n) || n != raw_len) {
        return Lost(absl::StrCat(label, ": zstd data does not decompress to ", raw_len, " bytes"));
      }
    } else {
      return Lost(absl::StrCat(label, ": unknown codec ", codec));
    }
    if (Hash(s.bytes) != hash) return Lost(absl::StrCat(label, ": checksum mismatch"));
    out.push_back(std::move(s));
  }
  if (body.remaining() != 0) return Lost(absl::StrCat(body.remaining(), " bytes after the last section"));
  return out;
}

const SnapshotSection* FindSnapshotSection(const std::vector<SnapshotSection>& sections, absl::string_view name) {
  for (const SnapshotSection& s : sections) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

}  // namespace trams::engine
