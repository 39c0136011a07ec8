// Any tokenizer.json + vocabulary (the input split at its first NUL byte): Tokenizer::LoadWith refuses
// them or gives a tokenizer whose ids stay in range, that decodes what it encodes, and (byte) round
// trips. File names go through ResolveModelFile against an empty temp directory, as Load would.
#include <stdlib.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/model_files.h"
#include "engine/tokenizer.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

const std::string& ModelDir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/fuzz_tokenizer_XXXXXX";
    FUZZ_CHECK(::mkdtemp(tmpl) != nullptr);
    return std::string(tmpl);
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trams;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string_view json = input.substr(0, nul);
  const std::string_view vocab = nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1);
  auto read = [&](std::string_view name, size_t max_bytes, std::string_view) -> absl::StatusOr<std::string> {
    auto resolved = engine::ResolveModelFile(ModelDir(), name);
    if (!resolved.ok()) return resolved.status();
    const std::string_view content = name == "tokenizer.json" ? json : vocab;
    if (content.size() > max_bytes) return absl::InvalidArgumentError("too large");
    return std::string(content);
  };
  auto tokenizer = engine::Tokenizer::LoadWith(read, ModelDir(), int64_t{1} << 20);
  if (!tokenizer.ok()) return 0;
  const engine::Tokenizer& tok = **tokenizer;
  FUZZ_CHECK(tok.vocab_size() >= 1);
  for (std::string_view text : {vocab, json}) {
    FUZZ_CHECK(tok.StableByteCount(text) <= text.size());
    auto ids = tok.Encode(text);
    if (!ids.ok()) continue;  // a word without an unk symbol
    for (int32_t id : *ids) {
      FUZZ_CHECK(id >= 0 && id < tok.vocab_size());
      (void)tok.TokenText(id);
    }
    auto decoded = tok.Decode(*ids);
    FUZZ_CHECK(decoded.ok());
    if (tok.type() == "byte") FUZZ_CHECK(*decoded == text);
  }
  (void)tok.TokenText(-1);
  (void)tok.TokenText(static_cast<int32_t>(tok.vocab_size()));
  return 0;
}
