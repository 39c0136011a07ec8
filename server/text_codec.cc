#include "server/text_codec.h"

#include <string_view>

#include "absl/strings/str_cat.h"

namespace trams::server {

TextCodec::TextCodec(absl::StatusOr<std::unique_ptr<engine::Tokenizer>> tokenizer, int64_t vocab_size)
    : tokenizer_(std::move(tokenizer)), vocab_size_(vocab_size) {}

std::string TextCodec::tokenizer_type() const {
  return tokenizer_.ok() ? std::string((*tokenizer_)->type()) : "none";
}

std::string TextCodec::TokenText(int32_t id) const {
  return tokenizer_.ok() ? (*tokenizer_)->TokenText(id) : std::string();
}

absl::Status TextCodec::CheckIds(absl::Span<const int32_t> ids) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " (index ", i,
                                                     " of the chunk) is outside the vocabulary [0, ", vocab_size_, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status TextCodec::Encode(std::string* text, bool final, std::vector<int32_t>* out) const {
  if (text->empty()) return absl::OkStatus();
  if (!tokenizer_.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("this model takes token ids, not text (", tokenizer_.status().message(), ")"));
  }
  const engine::Tokenizer& t = **tokenizer_;
  const size_t n = final ? text->size() : t.StableByteCount(*text);
  if (n == 0) return absl::OkStatus();
  absl::StatusOr<std::vector<int32_t>> ids = t.Encode(std::string_view(*text).substr(0, n));
  if (!ids.ok()) return absl::InvalidArgumentError(ids.status().message());
  out->insert(out->end(), ids->begin(), ids->end());
  text->erase(0, n);
  return absl::OkStatus();
}

}  // namespace trams::server
