// Memory settings as a client or flag could give them, against any model config that validates:
// MakeTramsSettings and TramsSettings::Validate refuse them or accept settings whose pool size
// (StreamState::BytesFor) is exactly what an independent 128-bit count says. UBSan reports any
// signed overflow on the way.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/stream_state.h"
#include "engine/model_config.h"
#include "engine/trams_settings.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using namespace trams;

// Sizes near the interesting edges: small, around the limits, or anything.
int SomeInt(FuzzedDataProvider& p) {
  switch (p.ConsumeIntegralInRange(0, 3)) {
    case 0:
      return p.ConsumeIntegralInRange(-2, 64);
    case 1:
      return static_cast<int>(engine::kMaxModelDim) + p.ConsumeIntegralInRange(-2, 2);
    case 2:
      return engine::kMaxMemLen + p.ConsumeIntegralInRange(-2, 2);
    default:
      return p.ConsumeIntegral<int>();
  }
}

void CheckBytes(const engine::ModelConfig& c, const engine::TramsSettings& s) {
  FUZZ_CHECK(s.Validate(c).ok());
  __int128 floats = c.d_model;
  for (int l = 0; l < c.n_layer; ++l) {
    floats += static_cast<__int128>(2) * s.mem_len * c.n_head * c.d_head;
    if (s.SelectsOnLayer(l)) floats += static_cast<__int128>(s.mem_len) * c.n_head;
  }
  FUZZ_CHECK(engine::StreamState::BytesFor(c, s) == static_cast<int64_t>(floats * 4));
  FUZZ_CHECK(s.attend_len() >= 0 && s.attend_len() <= s.mem_len);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider p(data, size);
  engine::ModelConfig c;
  c.n_layer = p.ConsumeIntegralInRange(1, 64);
  c.d_model = 2 * p.ConsumeIntegralInRange(1, static_cast<int>(engine::kMaxModelDim / 2));
  c.d_embed = c.d_model;
  c.n_head = p.ConsumeIntegralInRange(1, 64);
  c.d_head = p.ConsumeIntegralInRange(1, static_cast<int>(engine::kMaxModelDim));
  c.d_inner = p.ConsumeIntegralInRange(1, 64);
  c.vocab_size = p.ConsumeIntegralInRange(1, 1024);
  c.tie_projs = {false};
  if (!c.Validate().ok()) return 0;

  static const char* const kModes[] = {"xl", "trams", "none", "XL", ""};
  const std::string mode = p.ConsumeBool() ? kModes[p.ConsumeIntegralInRange(0, 4)] : p.ConsumeRandomLengthString(8);
  const int mem_len = SomeInt(p), attend = SomeInt(p), topk = SomeInt(p), remain = SomeInt(p);
  std::vector<int> layers(p.ConsumeIntegralInRange(0, 4));
  for (int& l : layers) l = p.ConsumeBool() ? p.ConsumeIntegralInRange(-1, c.n_layer) : p.ConsumeIntegral<int>();
  const std::string metric = p.ConsumeBool() ? "paper" : (p.ConsumeBool() ? "code" : p.ConsumeRandomLengthString(6));

  auto made = engine::MakeTramsSettings(mode, mem_len, attend, topk, remain, layers, metric, c);
  if (made.ok()) CheckBytes(c, *made);

  // The struct as a caller may fill it directly.
  engine::TramsSettings s;
  s.mode = static_cast<engine::MemoryMode>(p.ConsumeIntegralInRange(0, 2));
  s.mem_len = mem_len;
  s.topk = topk;
  s.remain = remain;
  s.layers = layers;
  if (s.Validate(c).ok()) CheckBytes(c, s);
  return 0;
}
