#include "engine/tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <fstream>
#include <functional>
#include <sstream>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/echo.h"
#include "engine/model_files.h"
#include "engine/status_macros.h"

namespace trams::engine {
namespace {

using nlohmann::json;

// The ASCII whitespace the word tokenizer splits on ('\n' additionally ends a line).
bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string OutOfRangeText(int32_t id) { return absl::StrCat("<id ", id, ">"); }

class ByteTokenizer final : public Tokenizer {
 public:
  std::string_view type() const override { return "byte"; }
  int64_t vocab_size() const override { return 256; }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }

  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override {
    std::string out(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] > 255) {
        return absl::InvalidArgumentError(
            absl::StrCat("byte tokenizer: id ", ids[i], " at position ", i, " is outside 0..255"));
      }
      out[i] = static_cast<char>(ids[i]);
    }
    return out;
  }

  std::string TokenText(int32_t id) const override {
    if (id < 0 || id > 255) return OutOfRangeText(id);
    return std::string(1, static_cast<char>(id));
  }

  size_t StableByteCount(std::string_view text) const override { return text.size(); }
};

// Heterogeneous lookup so Encode can probe with string_views into the input.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
};

class WordTokenizer final : public Tokenizer {
 public:
  WordTokenizer(std::vector<std::string> symbols,
                std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ids,
                std::string unk, int32_t unk_id, int32_t eos_id, bool add_eos)
      : symbols_(std::move(symbols)),
        ids_(std::move(ids)),
        unk_(std::move(unk)),
        unk_id_(unk_id),
        eos_id_(eos_id),
        add_eos_(add_eos) {}

  std::string_view type() const override { return "word"; }
  int64_t vocab_size() const override { return static_cast<int64_t>(symbols_.size()); }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    std::vector<int32_t> out;
    size_t i = 0;
    while (i < text.size()) {
      const char c = text[i];
      if (IsSpace(c)) {
        if (c == '\n' && add_eos_) out.push_back(eos_id_);
        ++i;
        continue;
      }
      size_t end = i;
      while (end < text.size() && !IsSpace(text[end])) ++end;
      const std::string_view word = text.substr(i, end - i);
      auto it = ids_.find(word);
      if (it != ids_.end()) {
        out.push_back(it->second);
      } else if (unk_id_ >= 0) {
        out.push_back(unk_id_);
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("word tokenizer: '", EchoForError(word),
                         "' is not in the vocabulary, which has no unk symbol '", EchoForError(unk_), "'"));
      }
      i = end;
    }
    return out;
  }

  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override {
    std::string out;
    for (size_t i = 0; i < ids.size(); ++i) {
      const int32_t id = ids[i];
      if (id < 0 || id >= static_cast<int64_t>(symbols_.size())) {
        return absl::InvalidArgumentError(absl::StrCat("word tokenizer: id ", id, " at position ",
                                                       i, " is outside 0..", symbols_.size() - 1));
      }
      if (id == eos_id_) {
        out.push_back('\n');
        continue;
      }
      if (!out.empty() && out.back() != '\n') out.push_back(' ');
      out += symbols_[id];
    }
    return out;
  }

  std::string TokenText(int32_t id) const override {
    if (id < 0 || id >= static_cast<int64_t>(symbols_.size())) return OutOfRangeText(id);
    if (id == eos_id_) return "\n";
    return symbols_[id];
  }

  size_t StableByteCount(std::string_view text) const override {
    for (size_t i = text.size(); i > 0; --i) {
      if (IsSpace(text[i - 1])) return i;
    }
    return 0;
  }

 private:
  std::vector<std::string> symbols_;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ids_;
  std::string unk_;
  int32_t unk_id_;  // -1: the vocab has no unk symbol
  int32_t eos_id_;  // -1: the vocab has no eos symbol (then add_eos_ is false)
  bool add_eos_;
};

// Parses vocab.txt: one symbol per line, line i (0-based) = id i. A final newline is optional
// and a trailing '\r' (CRLF files) is dropped.
absl::StatusOr<std::vector<std::string>> ParseVocab(const std::string& path,
                                                    std::string_view text) {
  std::vector<std::string> symbols;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": line ", symbols.size() + 1, " is empty"));
    }
    symbols.emplace_back(line);
    pos = nl + 1;
  }
  if (symbols.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty vocabulary"));
  return symbols;
}

// A string field of tokenizer.json, or `fallback` when absent.
absl::StatusOr<std::string> StringField(const std::string& path, const json& j, const char* key,
                                        const char* fallback) {
  auto it = j.find(key);
  if (it == j.end()) return std::string(fallback);
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" is not a string"));
  }
  return it->get<std::string>();
}

}  // namespace

std::unique_ptr<Tokenizer> MakeByteTokenizer() { return std::make_unique<ByteTokenizer>(); }

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeWordTokenizer(std::vector<std::string> symbols,
                                                             std::string unk, std::string eos,
                                                             bool add_eos) {
  if (symbols.empty()) return absl::InvalidArgumentError("word tokenizer: empty vocabulary");
  if (symbols.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("word tokenizer: vocabulary exceeds 2^31-1 symbols");
  }
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ids;
  ids.reserve(symbols.size());
  for (size_t i = 0; i < symbols.size(); ++i) {
    const std::string& s = symbols[i];
    // Encode splits on whitespace, so such a symbol could never be produced.
    if (s.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("word tokenizer: symbol of id ", i, " is empty"));
    }
    for (char c : s) {
      if (IsSpace(c)) {
        return absl::InvalidArgumentError(
            absl::StrCat("word tokenizer: symbol of id ", i, " ('", EchoForError(s), "') contains whitespace"));
      }
    }
    auto [it, inserted] = ids.emplace(s, static_cast<int32_t>(i));
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("word tokenizer: duplicate symbol '", EchoForError(s),
                                                     "' (ids ", it->second, " and ", i, ")"));
    }
  }
  auto unk_it = ids.find(unk);
  const int32_t unk_id = unk_it == ids.end() ? -1 : unk_it->second;
  auto eos_it = ids.find(eos);
  const int32_t eos_id = eos_it == ids.end() ? -1 : eos_it->second;
  if (add_eos && eos_id < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "word tokenizer: add_eos is set but the eos symbol '", EchoForError(eos), "' is not in the vocabulary"));
  }
  return std::make_unique<WordTokenizer>(std::move(symbols), std::move(ids), std::move(unk), unk_id,
                                         eos_id, add_eos);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir,
                                                           int64_t vocab_size) {
  auto read = [&](std::string_view name, size_t max_bytes, std::string_view what) {
    return ReadModelFile(model_dir, name, max_bytes, what);
  };
  return LoadWith(read, model_dir, vocab_size);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadWith(const ModelFileReader& read,
                                                               const std::string& model_dir,
                                                               int64_t vocab_size) {
  const std::string path = ModelFilePath(model_dir, "tokenizer.json");
  ASSIGN_OR_RETURN(std::string text, read("tokenizer.json", kMaxJsonFileBytes, "tokenizer config"));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON"));
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  auto type_it = j.find("type");
  if (type_it == j.end() || !type_it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": missing string field \"type\""));
  }
  const std::string type = type_it->get<std::string>();

  if (type == "none") {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", model_dir, " has no tokenizer (", path,
                     " has type \"none\"); requests must give token ids, not text"));
  }
  if (type == "byte") {
    if (vocab_size < 256) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": byte tokenizer needs vocab_size >= 256, the model has ", vocab_size));
    }
    return MakeByteTokenizer();
  }
  if (type == "word") {
    ASSIGN_OR_RETURN(std::string vocab_file, StringField(path, j, "vocab_file", "vocab.txt"));
    ASSIGN_OR_RETURN(std::string unk, StringField(path, j, "unk", "<unk>"));
    ASSIGN_OR_RETURN(std::string eos, StringField(path, j, "eos", "<eos>"));
    bool add_eos = true;
    if (auto it = j.find("add_eos"); it != j.end()) {
      if (!it->is_boolean()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": \"add_eos\" is not a boolean"));
      }
      add_eos = it->get<bool>();
    }
    const std::string vocab_path = ModelFilePath(model_dir, EchoForError(vocab_file, 256));
    ASSIGN_OR_RETURN(std::string vocab_text, read(vocab_file, kMaxVocabFileBytes, "vocabulary"));
    // Counted before any symbol is built: a vocabulary larger than the model is refused cheaply.
    const int64_t lines = static_cast<int64_t>(std::count(vocab_text.begin(), vocab_text.end(), '\n')) +
                          (!vocab_text.empty() && vocab_text.back() != '\n' ? 1 : 0);
    if (lines > vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          vocab_path, ": ", lines, " symbols exceed the model's vocab_size ", vocab_size));
    }
    ASSIGN_OR_RETURN(std::vector<std::string> symbols, ParseVocab(vocab_path, vocab_text));
    auto tokenizer = MakeWordTokenizer(std::move(symbols), std::move(unk), std::move(eos), add_eos);
    if (!tokenizer.ok()) {
      return absl::Status(tokenizer.status().code(),
                          absl::StrCat(vocab_path, ": ", tokenizer.status().message()));
    }
    return tokenizer;
  }
  return absl::InvalidArgumentError(absl::StrCat(path, ": unknown tokenizer type \"", EchoForError(type),
                                                 "\" (expected \"byte\", \"word\" or \"none\")"));
}

}  // namespace trams::engine
