// Text <-> token ids for the service: the model's tokenizer (when it has a usable one), id checks against
// the vocabulary, and the text of a token for answers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer.h"

namespace trams::server {

class TextCodec {
 public:
  // `tokenizer` may be an error (the model takes ids only): text is then FAILED_PRECONDITION with its reason.
  TextCodec(absl::StatusOr<std::unique_ptr<engine::Tokenizer>> tokenizer, int64_t vocab_size);

  bool has_tokenizer() const { return tokenizer_.ok(); }
  std::string tokenizer_type() const;  // "none" without one
  std::string TokenText(int32_t id) const;  // "" without a tokenizer
  // Token ids from text (the stable prefix only, unless `final`), consuming what it encodes from `text`.
  absl::Status Encode(std::string* text, bool final, std::vector<int32_t>* out) const;
  absl::Status CheckIds(absl::Span<const int32_t> ids) const;

 private:
  absl::StatusOr<std::unique_ptr<engine::Tokenizer>> tokenizer_;
  int64_t vocab_size_;
};

}  // namespace trams::server
