#include "server/session_snapshot.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "engine/json_int.h"
#include "engine/stream_snapshot.h"
#include "nlohmann/json.hpp"

namespace trams::server {
namespace {

constexpr char kSessionSection[] = "session";
constexpr char kTailSection[] = "session.tail";
constexpr char kTailLogprobsSection[] = "session.tail_logprobs";
constexpr char kRecentSection[] = "session.recent_ids";
constexpr char kSelectionScoresSection[] = "session.selection_scores";

template <class T>
std::string ArrayBytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

template <class T>
absl::StatusOr<std::vector<T>> BytesArray(const std::vector<engine::SnapshotSection>& sections, const char* name) {
  const engine::SnapshotSection* s = engine::FindSnapshotSection(sections, name);
  if (s == nullptr) return absl::DataLossError(absl::StrCat("session snapshot has no \"", name, "\" section"));
  if (s->bytes.size() % sizeof(T) != 0) {
    return absl::DataLossError(absl::StrCat("session snapshot section \"", name, "\" has ", s->bytes.size(),
                                            " bytes, not whole elements of ", sizeof(T)));
  }
  std::vector<T> v(s->bytes.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), s->bytes.data(), s->bytes.size());
  return v;
}

}  // namespace

SessionRecord RecordOf(const Session& s) {
  SessionRecord r;
  r.id = s.id;
  r.segment_len = s.segment_len;
  r.created_ms = s.created_ms;
  r.last_used_ms = s.last_used_ms;
  r.tail = s.tail;
  r.tail_logprobs = s.tail_logprobs;
  r.tokens_scored = s.tokens_scored;
  r.nll_sum = s.nll_sum;
  r.recent_ids.assign(s.recent_ids.begin(), s.recent_ids.end());
  r.recent_first = s.recent_first;
  r.recent_ids_kept = static_cast<int64_t>(s.recent_ids_kept);
  r.last_selection = s.last_selection;
  return r;
}

void ApplyRecord(SessionRecord r, Session* s) {
  s->id = std::move(r.id);
  s->segment_len = r.segment_len;
  s->created_ms = r.created_ms;
  s->last_used_ms = r.last_used_ms;
  s->tail = std::move(r.tail);
  s->tail_logprobs = std::move(r.tail_logprobs);
  s->tokens_scored = r.tokens_scored;
  s->nll_sum = r.nll_sum;
  s->recent_ids.assign(r.recent_ids.begin(), r.recent_ids.end());
  s->recent_first = r.recent_first;
  s->recent_ids_kept = static_cast<size_t>(r.recent_ids_kept);
  s->last_selection = std::move(r.last_selection);
  s->committed = {s->position(), s->stream->size(), s->tokens_scored, s->nll_sum};
}

absl::StatusOr<std::string> EncodeSessionSnapshot(SessionRecord r, engine::StreamImage image,
                                                  const SnapshotIdentity& identity,
                                                  engine::SnapshotCompression compression) {
  std::vector<float> selection_scores;
  for (const auto& layer : r.last_selection.scores) {
    for (const auto& head : layer) selection_scores.insert(selection_scores.end(), head.begin(), head.end());
  }
  nlohmann::json meta = {
      {"id", r.id},
      {"tokenizer", identity.tokenizer},
      {"segment_len", r.segment_len},
      {"created_ms", r.created_ms},
      {"last_used_ms", r.last_used_ms},
      {"tokens_scored", r.tokens_scored},
      {"nll_sum", r.nll_sum},
      {"recent_first", r.recent_first},
      {"recent_ids_kept", r.recent_ids_kept},
      {"selection",
       {{"segment_start", r.last_selection.segment_start},
        {"segment_len", r.last_selection.segment_len},
        {"recent_from", r.last_selection.recent_from},
        {"selected", r.last_selection.selected}}},
  };
  if (!std::isfinite(r.nll_sum)) return absl::InternalError("the session's NLL sum is not finite");
  std::vector<engine::SnapshotSection> sections;
  sections.push_back({kSessionSection, meta.dump()});
  sections.push_back({kTailSection, ArrayBytes(r.tail)});
  sections.push_back({kTailLogprobsSection, ArrayBytes(r.tail_logprobs)});
  sections.push_back({kRecentSection, ArrayBytes(r.recent_ids)});
  sections.push_back({kSelectionScoresSection, ArrayBytes(selection_scores)});
  engine::AppendStreamSections(std::move(image), identity.model_fingerprint, &sections);
  return engine::EncodeSnapshot(sections, compression);
}

absl::StatusOr<SessionImage> DecodeSessionSnapshot(absl::string_view blob, const engine::ModelConfig& config,
                                                     const SnapshotIdentity& identity, uint64_t max_raw_bytes) {
  absl::StatusOr<std::vector<engine::SnapshotSection>> sections = engine::DecodeSnapshot(blob, max_raw_bytes);
  if (!sections.ok()) return sections.status();
  return SessionImageFromSections(*std::move(sections), config, identity);
}

absl::StatusOr<SessionImage> SessionImageFromSections(std::vector<engine::SnapshotSection> all,
                                                      const engine::ModelConfig& config, const SnapshotIdentity& identity) {
  std::vector<engine::SnapshotSection>* sections = &all;
  const engine::SnapshotSection* meta_section = engine::FindSnapshotSection(*sections, kSessionSection);
  if (meta_section == nullptr) return absl::DataLossError("the snapshot holds no session (no \"session\" section)");
  SessionImage d;
  SessionRecord& r = d.record;
  std::vector<size_t> selection_shape;  // scores per (layer, head), in order
  try {
    const nlohmann::json meta = nlohmann::json::parse(meta_section->bytes);
    const std::string tokenizer = meta.at("tokenizer").get<std::string>();
    if (tokenizer != identity.tokenizer) {
      return absl::FailedPreconditionError(absl::StrCat("the session was made with the '", tokenizer,
                                                        "' tokenizer but this server's is '", identity.tokenizer, "'"));
    }
    r.id = meta.at("id").get<std::string>();
    r.segment_len = engine::JsonIntAt<int>(meta, "segment_len");
    r.created_ms = engine::JsonIntAt<int64_t>(meta, "created_ms");
    r.last_used_ms = engine::JsonIntAt<int64_t>(meta, "last_used_ms");
    r.tokens_scored = engine::JsonIntAt<int64_t>(meta, "tokens_scored");
    r.nll_sum = meta.at("nll_sum").get<double>();
    r.recent_first = engine::JsonIntAt<int64_t>(meta, "recent_first");
    r.recent_ids_kept = engine::JsonIntAt<int64_t>(meta, "recent_ids_kept");
    const nlohmann::json& sel = meta.at("selection");
    r.last_selection.segment_start = engine::JsonIntAt<int64_t>(sel, "segment_start");
    r.last_selection.segment_len = engine::JsonIntAt<int>(sel, "segment_len");
    r.last_selection.recent_from = engine::JsonIntAt<int64_t>(sel, "recent_from");
    const nlohmann::json& selected = sel.at("selected");  // positions per layer and head
    if (!selected.is_array()) throw std::out_of_range("'selected' must be an array of layers");
    for (const nlohmann::json& layer : selected) {
      if (!layer.is_array()) throw std::out_of_range("'selected' must hold an array of heads per layer");
      std::vector<std::vector<int64_t>>& heads = r.last_selection.selected.emplace_back();
      for (const nlohmann::json& head : layer) heads.push_back(engine::JsonInts<int64_t>(head, "selected"));
    }
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("the snapshot's \"session\" section is malformed: ", e.what()));
  }
  absl::StatusOr<std::vector<int32_t>> tail = BytesArray<int32_t>(*sections, kTailSection);
  if (!tail.ok()) return tail.status();
  absl::StatusOr<std::vector<float>> tail_lp = BytesArray<float>(*sections, kTailLogprobsSection);
  if (!tail_lp.ok()) return tail_lp.status();
  absl::StatusOr<std::vector<int32_t>> recent = BytesArray<int32_t>(*sections, kRecentSection);
  if (!recent.ok()) return recent.status();
  absl::StatusOr<std::vector<float>> scores = BytesArray<float>(*sections, kSelectionScoresSection);
  if (!scores.ok()) return scores.status();
  r.tail = *std::move(tail);
  r.tail_logprobs = *std::move(tail_lp);
  r.recent_ids = *std::move(recent);
  // The selection's scores, in the shape of its positions.
  size_t at = 0;
  r.last_selection.scores.resize(r.last_selection.selected.size());
  for (size_t l = 0; l < r.last_selection.selected.size(); ++l) {
    for (const auto& head : r.last_selection.selected[l]) {
      if (scores->size() - at < head.size()) return absl::DataLossError("the session's selection scores are truncated");
      r.last_selection.scores[l].emplace_back(scores->begin() + at, scores->begin() + at + head.size());
      at += head.size();
    }
  }
  if (at != scores->size()) return absl::DataLossError("the session's selection scores do not match its selection");

  absl::StatusOr<engine::StreamImage> image =
      engine::StreamImageFromSections(&*sections, config, identity.model_fingerprint);
  if (!image.ok()) return image.status();
  d.image = *std::move(image);
  // What the server relies on: a tail inside one segment, its reported values beside it, ids in the
  // vocabulary, counters and times in [0, 2^62] (so no sum or difference of them overflows).
  const int64_t vocab = config.vocab_size;
  auto bounded = [](int64_t v, int64_t lo) { return v >= lo && v <= engine::kMaxStreamPosition; };
  bool counters_ok = bounded(r.created_ms, 0) && bounded(r.last_used_ms, 0) && bounded(r.tokens_scored, 0) &&
                     bounded(r.recent_first, 0) && bounded(r.recent_ids_kept, 0) &&
                     bounded(r.last_selection.segment_start, -1) && bounded(r.last_selection.recent_from, 0);
  for (const auto& layer : r.last_selection.selected) {
    for (const auto& head : layer) {
      for (int64_t p : head) counters_ok = counters_ok && bounded(p, 0);
    }
  }
  if (!counters_ok) return absl::DataLossError("the session's counters, times or positions are outside [0, 2^62]");
  if (r.segment_len < 1 || static_cast<int64_t>(r.tail.size()) >= r.segment_len ||
      r.tail_logprobs.size() != r.tail.size() || r.tokens_scored < 0 || r.recent_first < 0 || r.recent_ids_kept < 0 ||
      static_cast<int64_t>(r.recent_ids.size()) > r.recent_ids_kept ||
      r.recent_first + static_cast<int64_t>(r.recent_ids.size()) != d.image.position + static_cast<int64_t>(r.tail.size())) {
    return absl::DataLossError("the session's segment length, tail, counters or recent ids are inconsistent");
  }
  for (const std::vector<int32_t>* ids : {&r.tail, &r.recent_ids}) {
    for (int32_t id : *ids) {
      if (id < 0 || id >= vocab) return absl::DataLossError(absl::StrCat("the session holds token id ", id,
                                                                         ", outside the vocabulary of ", vocab));
    }
  }
  return d;
}

}  // namespace trams::server
