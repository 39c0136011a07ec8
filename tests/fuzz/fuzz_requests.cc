// Request messages as a client could send them (any bytes parsed as CreateSessionRequest or
// GenerateRequest): proto_convert.h refuses them or returns settings that hold the promises the
// server relies on (valid for the model, within the server's limits, pool bytes exact and bounded).
#include <cstdint>
#include <string>

#include "engine/stream_state.h"
#include "server/proto_convert.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using namespace trams;

const engine::ModelConfig& Config() {
  static const engine::ModelConfig* config = [] {
    auto* c = new engine::ModelConfig;
    c->n_layer = 4;
    c->d_model = c->d_embed = 64;
    c->n_head = 4;
    c->d_head = 16;
    c->d_inner = 128;
    c->vocab_size = 256;
    c->tie_projs = {false};
    FUZZ_CHECK(c->Validate().ok());
    return c;
  }();
  return *config;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const server::ServerOptions options;
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    v1::CreateSessionRequest req;
    if (!req.ParseFromString(bytes)) return 0;
    absl::StatusOr<server::SessionSpec> spec = server::SessionSpecFrom(req, options, Config());
    if (!spec.ok()) return 0;
    FUZZ_CHECK(spec->memory.Validate(Config()).ok());
    FUZZ_CHECK(spec->memory.mem_len <= options.limits.max_mem_len);
    FUZZ_CHECK(spec->segment_len >= 1 && spec->segment_len <= options.limits.max_segment_len);
    const int64_t bytes_for = engine::StreamState::BytesFor(Config(), spec->memory);
    const int64_t most = 4 * (Config().d_model + int64_t{Config().n_layer} * options.limits.max_mem_len *
                                                     (2 * Config().n_head * Config().d_head + Config().n_head));
    FUZZ_CHECK(bytes_for > 0 && bytes_for <= most);
  } else {
    v1::GenerateRequest req;
    if (!req.ParseFromString(bytes)) return 0;
    absl::StatusOr<server::GenerateSpec> spec = server::GenerateSpecFrom(req, options.requests, 42);
    if (!spec.ok()) return 0;
    FUZZ_CHECK(spec->max_tokens >= 1 && spec->max_tokens <= options.requests.max_generate_tokens);
    FUZZ_CHECK(spec->sampling.Validate().ok());
    FUZZ_CHECK(req.stop_size() <= options.requests.max_stop_strings);
  }
  return 0;
}
