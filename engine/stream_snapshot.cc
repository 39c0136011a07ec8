#include "engine/stream_snapshot.h"

#include <bit>
#include <cstring>
#include <exception>

#include "absl/strings/str_cat.h"
#include "engine/json_int.h"
#include "nlohmann/json.hpp"

namespace trams::engine {
namespace {

static_assert(std::endian::native == std::endian::little, "snapshots store little-endian arrays as they are in memory");

constexpr char kHiddenSection[] = "stream.hidden";
constexpr char kKeysSection[] = "pool.keys";
constexpr char kValuesSection[] = "pool.values";
constexpr char kScoresSection[] = "pool.scores";

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

absl::StatusOr<std::vector<float>> BytesFloats(const std::string& bytes, const char* name) {
  if (bytes.size() % sizeof(float) != 0) {
    return absl::DataLossError(absl::StrCat("snapshot section \"", name, "\" has ", bytes.size(),
                                            " bytes, not a whole number of floats"));
  }
  std::vector<float> v(bytes.size() / sizeof(float));
  if (!v.empty()) std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

SnapshotSection* Find(std::vector<SnapshotSection>* sections, const char* name) {
  for (SnapshotSection& s : *sections) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

absl::StatusOr<PoolDType> DTypeNamed(const std::string& name) {
  absl::StatusOr<PoolDType> t = ParsePoolDType(name);
  if (!t.ok()) return absl::DataLossError(absl::StrCat("snapshot: unknown pool dtype \"", name, "\""));
  return t;
}

}  // namespace

void AppendStreamSections(StreamImage image, const std::string& model_fingerprint, std::vector<SnapshotSection>* out) {
  // The config fields that shape the arrays are written so that a reader can say what does not fit.
  nlohmann::json meta = {
      {"model", model_fingerprint},
      {"pool_dtype", PoolDTypeName(image.pool_dtype)},
      {"size", image.size},
      {"position", image.position},
      {"settings",
       {{"mode", std::string(MemoryModeName(image.settings.mode))},
        {"mem_len", image.settings.mem_len},
        {"topk", image.settings.topk},
        {"remain", image.settings.remain},
        {"layers", image.settings.layers},
        {"metric", std::string(SelectionMetricName(image.settings.metric))}}},
  };
  out->push_back({kStreamSection, meta.dump()});
  out->push_back({kHiddenSection, FloatBytes(image.last_hidden)});
  out->push_back({kKeysSection, std::move(image.keys)});
  out->push_back({kValuesSection, std::move(image.values)});
  out->push_back({kScoresSection, FloatBytes(image.scores)});
}

absl::StatusOr<StreamImage> StreamImageFromSections(std::vector<SnapshotSection>* sections, const ModelConfig& config,
                                                    const std::string& model_fingerprint) {
  const SnapshotSection* meta_section = Find(sections, kStreamSection);
  if (meta_section == nullptr) return absl::DataLossError("snapshot has no \"stream\" section");
  StreamImage image;
  std::string model, dtype;
  try {
    const nlohmann::json meta = nlohmann::json::parse(meta_section->bytes);
    model = meta.at("model").get<std::string>();
    if (model != model_fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat("the snapshot was made by model ", model,
                                                        " but this server runs model ", model_fingerprint,
                                                        ": restore it on a server with that model"));
    }
    dtype = meta.at("pool_dtype").get<std::string>();
    image.size = JsonIntAt<int>(meta, "size");
    image.position = JsonIntAt<int64_t>(meta, "position");
    const nlohmann::json& st = meta.at("settings");
    absl::StatusOr<TramsSettings> settings = ParseTramsSettings(
        st.at("mode").get<std::string>(), JsonIntAt<int>(st, "mem_len"), -1, JsonIntAt<int>(st, "topk"),
        JsonIntAt<int>(st, "remain"), JsonInts<int>(st.at("layers"), "layers"), st.at("metric").get<std::string>());
    if (!settings.ok()) {
      return absl::DataLossError(absl::StrCat("snapshot's memory settings are invalid: ", settings.status().message()));
    }
    image.settings = *std::move(settings);
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("snapshot's \"stream\" section is malformed: ", e.what()));
  }
  absl::StatusOr<PoolDType> pool_dtype = DTypeNamed(dtype);
  if (!pool_dtype.ok()) return pool_dtype.status();
  image.pool_dtype = *pool_dtype;

  SnapshotSection* hidden = Find(sections, kHiddenSection);
  SnapshotSection* keys = Find(sections, kKeysSection);
  SnapshotSection* values = Find(sections, kValuesSection);
  SnapshotSection* scores = Find(sections, kScoresSection);
  if (hidden == nullptr || keys == nullptr || values == nullptr || scores == nullptr) {
    return absl::DataLossError("snapshot lacks one of the stream's sections (stream.hidden, pool.keys, "
                               "pool.values, pool.scores)");
  }
  absl::StatusOr<std::vector<float>> h = BytesFloats(hidden->bytes, kHiddenSection);
  if (!h.ok()) return h.status();
  absl::StatusOr<std::vector<float>> s = BytesFloats(scores->bytes, kScoresSection);
  if (!s.ok()) return s.status();
  image.last_hidden = *std::move(h);
  image.scores = *std::move(s);
  image.keys = std::move(keys->bytes);
  image.values = std::move(values->bytes);
  if (absl::Status fits = CheckStreamImage(config, image); !fits.ok()) {
    return absl::DataLossError(absl::StrCat("snapshot does not fit its own model: ", fits.message()));
  }
  return image;
}

}  // namespace trams::engine
