// libFuzzer target: the session snapshot's sections (server/session_snapshot.h, engine/stream_snapshot.h)
// on arbitrary contents never crash, never allocate past what their bytes justify, and what they accept
// is a session the server could run (CheckStreamImage holds) that encodes and decodes back to itself.
// The container's reader has its own target (fuzz_snapshot); this one starts behind its checksums: the
// input is a list of sections, each a name index byte (kNames), a u32 little-endian length and the bytes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/stream_image.h"
#include "server/session_snapshot.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

const char* const kNames[] = {"session",    "session.tail", "session.tail_logprobs", "session.recent_ids",
                              "session.selection_scores", "stream", "stream.hidden", "pool.keys",
                              "pool.values", "pool.scores"};
constexpr size_t kNameCount = sizeof(kNames) / sizeof(kNames[0]);

// The model the seeds were made for (tests/fuzz/make_seeds.py): 2 layers, d_model 8, 2 heads of 4.
trams::engine::ModelConfig Config() {
  trams::engine::ModelConfig c;
  c.n_layer = 2;
  c.d_model = 8;
  c.d_embed = 8;
  c.n_head = 2;
  c.d_head = 4;
  c.d_inner = 16;
  c.vocab_size = 64;
  c.tie_projs = {false};
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trams;
  std::vector<engine::SnapshotSection> sections;
  size_t at = 0;
  while (at + 5 <= size && sections.size() < 32) {
    const size_t name = data[at] % kNameCount;
    uint32_t len;
    std::memcpy(&len, data + at + 1, 4);
    at += 5;
    len = static_cast<uint32_t>(std::min<size_t>(len, size - at));
    sections.push_back({kNames[name], std::string(reinterpret_cast<const char*>(data) + at, len)});
    at += len;
  }
  static const engine::ModelConfig config = Config();
  const server::SnapshotIdentity identity{"xxh3:00000000000000f5", "byte"};
  absl::StatusOr<server::SessionImage> image = server::SessionImageFromSections(sections, config, identity);
  if (!image.ok()) {
    const absl::StatusCode code = image.status().code();
    FUZZ_CHECK(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kFailedPrecondition);
    return 0;
  }
  FUZZ_CHECK(engine::CheckStreamImage(config, image->image).ok());
  absl::StatusOr<std::string> blob =
      server::EncodeSessionSnapshot(image->record, image->image, identity, engine::SnapshotCompression::kNone);
  if (!blob.ok()) return 0;  // a record the encoder refuses (a non-finite NLL sum)
  absl::StatusOr<server::SessionImage> back = server::DecodeSessionSnapshot(*blob, config, identity, uint64_t{1} << 26);
  FUZZ_CHECK(back.ok());
  absl::StatusOr<std::string> again =
      server::EncodeSessionSnapshot(back->record, back->image, identity, engine::SnapshotCompression::kNone);
  FUZZ_CHECK(again.ok() && *again == *blob);
  return 0;
}
