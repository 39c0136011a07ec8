// A stream image (stream_image.h) as snapshot sections (snapshot_file.h), and back with every check a
// restore needs: the sections say which model made them, what the settings and cursor are, and hold the pool
// in its storage dtype. What the server adds around them (session id, tail, counters) is its own section.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/snapshot_file.h"
#include "engine/stream_image.h"

namespace trams::engine {

// Section names: "stream" (JSON: model fingerprint, model shape, pool dtype, settings, size, position),
// "stream.hidden" (f32), "pool.keys", "pool.values" (pool dtype), "pool.scores" (f32).
inline constexpr char kStreamSection[] = "stream";

// Appends the image's sections to `out`, moving its arrays (no copy of the pool).
void AppendStreamSections(StreamImage image, const std::string& model_fingerprint, std::vector<SnapshotSection>* out);

// The image the sections hold, for a model of `config` whose fingerprint is `model_fingerprint`; takes the
// pool's bytes out of `sections`. FAILED_PRECONDITION when another model made them (naming both
// fingerprints); DATA_LOSS when a section is missing, malformed, or does not fit the model.
absl::StatusOr<StreamImage> StreamImageFromSections(std::vector<SnapshotSection>* sections, const ModelConfig& config,
                                                    const std::string& model_fingerprint);

}  // namespace trams::engine
