// A session as one snapshot blob (engine/snapshot_file.h): its stream image (engine/stream_snapshot.h) plus
// what the server keeps around the stream: id, segment length, the provisional tail and what was reported
// for it, the totals, the recent ids and the last selection (ExplainSelection), and the tokenizer. What
// ExportSession sends, ImportSession and the state store read, and what survives a restart.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/engine.h"
#include "engine/snapshot_file.h"
#include "engine/stream_image.h"
#include "server/session.h"

namespace trams::server {

// Everything of a session but its stream.
struct SessionRecord {
  std::string id;
  int segment_len = 0;
  int64_t created_ms = 0;
  int64_t last_used_ms = 0;
  std::vector<int32_t> tail;
  std::vector<float> tail_logprobs;
  int64_t tokens_scored = 0;
  double nll_sum = 0;
  std::vector<int32_t> recent_ids;
  int64_t recent_first = 0;
  int64_t recent_ids_kept = 0;
  SelectionRecord last_selection;
};

// The record of a session held by the caller (Acquire .. Release, or not yet shared).
SessionRecord RecordOf(const Session& session);
// Puts a record into a session being built (its stream already set).
void ApplyRecord(SessionRecord record, Session* session);

struct SnapshotIdentity {
  std::string model_fingerprint;  // Engine::model_fingerprint()
  std::string tokenizer;          // "byte", "word", "none"
};

absl::StatusOr<std::string> EncodeSessionSnapshot(SessionRecord record, engine::StreamImage image,
                                                  const SnapshotIdentity& identity,
                                                  engine::SnapshotCompression compression);

// A session whole, out of its engine: what a snapshot blob holds.
struct SessionImage {
  SessionRecord record;
  engine::StreamImage image;
};
// The session the decoded sections hold (DecodeSessionSnapshot without the container); takes their arrays.
absl::StatusOr<SessionImage> SessionImageFromSections(std::vector<engine::SnapshotSection> sections,
                                                      const engine::ModelConfig& config, const SnapshotIdentity& identity);
// DATA_LOSS for a blob that is corrupt, truncated or inconsistent (saying what), FAILED_PRECONDITION for
// another model or tokenizer (naming both) or a newer format, RESOURCE_EXHAUSTED past `max_raw_bytes`.
absl::StatusOr<SessionImage> DecodeSessionSnapshot(absl::string_view blob, const engine::ModelConfig& config,
                                                     const SnapshotIdentity& identity, uint64_t max_raw_bytes);

}  // namespace trams::server
