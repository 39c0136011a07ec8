// Proto <-> the server's and the engine's types, in one place. Every memory setting and sampling
// parameter a client sends is checked here, in 64-bit where sizes combine, before anything is allocated
// or queued (fuzzed by tests/fuzz/fuzz_requests.cc); unset fields take the server options' defaults.
#pragma once

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/sampler.h"
#include "engine/trams_settings.h"
#include "server/server_options.h"
#include "server/session.h"
#include "server/text_codec.h"
#include "trams/v1/trams.pb.h"

namespace trams::server {

// A session's memory settings; unset fields take the defaults' (where the mode matches theirs).
absl::StatusOr<engine::TramsSettings> MemorySettingsFrom(const v1::MemorySettings& m, const SessionDefaults& defaults,
                                                         const engine::ModelConfig& config);

// What CreateSession asks for, checked against the server's limits.
struct SessionSpec {
  engine::TramsSettings memory;
  int segment_len = 0;
};
absl::StatusOr<SessionSpec> SessionSpecFrom(const v1::CreateSessionRequest& req, const ServerOptions& options,
                                            const engine::ModelConfig& config);

// A Generate call's length and sampling (the seed: the request's, else `fallback_seed`).
struct GenerateSpec {
  int max_tokens = 64;
  engine::SamplingParams sampling;
};
absl::StatusOr<GenerateSpec> GenerateSpecFrom(const v1::GenerateRequest& req, const RequestLimits& limits,
                                              uint64_t fallback_seed);

void ToProto(const engine::TramsSettings& s, v1::MemorySettings* out);
void ToProto(const SessionSnapshot& s, v1::Session* out);
// What the session's last segment selected, with the ids and text of the tokens it still keeps.
void ToProto(const Session& s, const TextCodec& codec, v1::ExplainSelectionResponse* out);

}  // namespace trams::server
