// Tokenizers of a model directory's tokenizer.json (see engine/DESIGN.md): "byte" (UTF-8 bytes
// are ids 0..255) and "word" (WikiText-style whitespace split over a vocab.txt).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace trams::engine {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads <model_dir>/tokenizer.json ({"type":"byte"} or {"type":"word",...}) and checks that
  // every id it can produce fits the model's vocab_size. For {"type":"none"} (test models) it
  // returns FailedPrecondition: such a model takes token ids only.
  // Files are read inside the model directory only (see engine/model_files.h).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir,
                                                         int64_t vocab_size);
  // Reads one file of the model directory by name (at most max_bytes; `what` names it in messages).
  using ModelFileReader = std::function<absl::StatusOr<std::string>(
      std::string_view name, size_t max_bytes, std::string_view what)>;
  // Load with the files supplied by `read` (in-memory content for tests and fuzzing); `model_dir`
  // only names the directory in messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadWith(const ModelFileReader& read,
                                                             const std::string& model_dir,
                                                             int64_t vocab_size);

  virtual std::string_view type() const = 0;  // "byte" or "word"
  // Number of ids the tokenizer can produce (ids are 0..vocab_size()-1).
  virtual int64_t vocab_size() const = 0;
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;
  // InvalidArgument on an id outside 0..vocab_size()-1.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const = 0;
  // Printable form of one token: the symbol for word models ("\n" for the eos symbol), the raw
  // byte for byte models (possibly part of a UTF-8 sequence). Out-of-range ids give "<id N>".
  virtual std::string TokenText(int32_t id) const = 0;
  // For streaming input: how many leading bytes of `text` can be encoded now without changing
  // the result when more text follows (byte: all; word: up to and including the last
  // whitespace character), so Encode(a + b) == Encode(a[:k]) + Encode(a[k:] + b).
  virtual size_t StableByteCount(std::string_view text) const = 0;
};

std::unique_ptr<Tokenizer> MakeByteTokenizer();

// Word tokenizer over `symbols` (id i = symbols[i]). `unk` may be absent from the vocab (Encode
// then fails on an unknown word); `eos` must be present when add_eos is true.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeWordTokenizer(std::vector<std::string> symbols,
                                                             std::string unk, std::string eos,
                                                             bool add_eos);

}  // namespace trams::engine
