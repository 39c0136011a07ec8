// trams-eval: scores a text file with the paper's protocol and prints loss, ppl, bpc, speed, memory.
//   trams-eval --model models/<name> --input book.txt --mode trams --mem_len 400 --topk 50 --remain 150
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/cli/flag_usage.h"
#include "engine/open_engine.h"
#include "engine/evaluator.h"
#include "engine/status_macros.h"
#include "engine/tokenizer.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json, model.safetensors, tokenizer.json)");
ABSL_FLAG(std::string, input, "", "text file to score (encoded with the model's tokenizer)");
ABSL_FLAG(std::string, input_ids, "", "file of whitespace-separated token ids (instead of --input)");
ABSL_FLAG(std::string, mode, "trams", "memory mode: xl | trams | none");
ABSL_FLAG(int, mem_len, 400, "M: pool size per layer (xl: also the tokens attended)");
ABSL_FLAG(int, m, -1, "m: memory tokens attended; optional check (trams: topk + remain, xl: M)");
ABSL_FLAG(int, topk, 50, "TRAMS: tokens selected by score from the older part of the pool");
ABSL_FLAG(int, remain, 150, "TRAMS: newest pool tokens always attended (m = topk + remain)");
ABSL_FLAG(std::string, layers, "", "TRAMS: comma-separated layers that select (default: all)");
ABSL_FLAG(std::string, metric, "code", "TRAMS score: code (||K'||*|sum K'|, the authors' code) | paper (cos*norm)");
ABSL_FLAG(int, tgt_len, 64, "n: tokens per segment");
ABSL_FLAG(int, batch, 10, "parallel streams the input is cut into");
ABSL_FLAG(int64_t, max_tokens, -1, "score only the first T tokens (-1: all)");
ABSL_FLAG(bool, reference_compat, false,
          "reproduce the authors' evaluation: zero-filled initial pool, in-segment label shift, their loss aggregate");
ABSL_FLAG(bool, json, false, "print one JSON object on stdout");
ABSL_FLAG(int, threads, 0, "worker threads (0: one per core)");
ABSL_FLAG(std::string, device, "auto", "auto (a CUDA GPU if there is one, else the host) | cpu | cuda | cuda:N | emulated");
ABSL_FLAG(std::string, pool_dtype, "f32",
          "how the pools store keys and values: f32 | f16 | bf16 (rounded to nearest even, read back as f32; "
          "f16/bf16 halve the pools' key/value bytes)");

namespace trams::engine {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::vector<int32_t>> ReadIds(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::vector<int32_t> ids;
  int64_t index = 0;
  for (absl::string_view word : absl::StrSplit(text, absl::ByAnyChar(" \t\r\n"), absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(word, &id)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": token ", index, " ('", word, "') is not an integer id"));
    }
    ids.push_back(id);
    ++index;
  }
  return ids;
}

absl::StatusOr<TramsSettings> SettingsFromFlags(const ModelConfig& config) {
  std::vector<int> layers;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_layers), ',', absl::SkipEmpty())) {
    int layer;
    if (!absl::SimpleAtoi(part, &layer)) {
      return absl::InvalidArgumentError(absl::StrCat("--layers: '", part, "' is not a layer number"));
    }
    layers.push_back(layer);
  }
  return MakeTramsSettings(absl::GetFlag(FLAGS_mode), absl::GetFlag(FLAGS_mem_len), absl::GetFlag(FLAGS_m),
                           absl::GetFlag(FLAGS_topk), absl::GetFlag(FLAGS_remain), std::move(layers),
                           absl::GetFlag(FLAGS_metric), config);
}

void DrawProgress(int64_t done, int64_t total) {
  const int width = 40;
  const int filled = static_cast<int>(width * done / std::max<int64_t>(1, total));
  std::fprintf(stderr, "\r[%s%s] %3d%%", std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
               static_cast<int>(100 * done / std::max<int64_t>(1, total)));
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

absl::Status Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  const std::string input = absl::GetFlag(FLAGS_input), input_ids = absl::GetFlag(FLAGS_input_ids);
  if (input.empty() == input_ids.empty()) return absl::InvalidArgumentError("give exactly one of --input and --input_ids");
  DeviceChoice choice;
  choice.device = absl::GetFlag(FLAGS_device);
  choice.threads = absl::GetFlag(FLAGS_threads);
  choice.pool_dtype = absl::GetFlag(FLAGS_pool_dtype);
  ASSIGN_OR_RETURN(OpenedEngine opened, OpenEngine(model_dir, choice));
  Engine& engine = *opened.engine;
  if (choice.device == "auto" && engine.device() == "cpu") {
    std::fprintf(stderr, "trams-eval: %s\n", opened.reason.c_str());
  }
  const ModelConfig config = engine.config();
  std::vector<int32_t> ids;
  if (!input.empty()) {
    ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(model_dir, config.vocab_size));
    ASSIGN_OR_RETURN(std::string text, ReadFile(input));
    ASSIGN_OR_RETURN(ids, tokenizer->Encode(text));
  } else {
    ASSIGN_OR_RETURN(ids, ReadIds(input_ids));
  }
  if (ids.empty()) return absl::InvalidArgumentError("the input holds no tokens");
  EvalOptions options;
  ASSIGN_OR_RETURN(options.settings, SettingsFromFlags(config));
  options.tgt_len = absl::GetFlag(FLAGS_tgt_len);
  options.batch = absl::GetFlag(FLAGS_batch);
  options.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  options.reference_compat = absl::GetFlag(FLAGS_reference_compat);
  if (isatty(STDERR_FILENO)) options.progress = DrawProgress;
  ASSIGN_OR_RETURN(const EvalResult r, Evaluate(engine, ids, options));
  const std::string device_name = engine.device();
  const TramsSettings& s = options.settings;
  const int64_t peak = PeakResidentBytes();
  if (absl::GetFlag(FLAGS_json)) {
    std::printf(
        "{\"loss\": %.6f, \"ppl\": %.4f, \"bpc\": %.5f, \"tokens\": %lld, \"scored\": %lld, \"seconds\": %.3f, "
        "\"tokens_per_second\": %.1f, \"peak_memory_bytes\": %lld, \"pool_bytes_per_stream\": %lld, "
        "\"mode\": \"%s\", \"mem_len\": %d, \"topk\": %d, \"remain\": %d, \"tgt_len\": %d, \"batch\": %d, "
        "\"reference_compat\": %s, \"device\": \"%s\"}\n",
        r.loss, r.ppl, r.bpc, static_cast<long long>(r.tokens), static_cast<long long>(r.scored), r.seconds,
        r.tokens_per_second, static_cast<long long>(peak), static_cast<long long>(r.pool_bytes_per_stream),
        std::string(MemoryModeName(s.mode)).c_str(), s.mem_len, s.topk, s.remain, options.tgt_len, options.batch,
        options.reference_compat ? "true" : "false", device_name.c_str());
  } else {
    std::printf("mode %s  M %d  topk %d  remain %d  n %d  batch %d%s\n", std::string(MemoryModeName(s.mode)).c_str(),
                s.mem_len, s.topk, s.remain, options.tgt_len, options.batch,
                options.reference_compat ? "  (reference-compat)" : "");
    std::printf("loss %.4f  ppl %.3f  bpc %.4f\n", r.loss, r.ppl, r.bpc);
    std::printf("%lld tokens (%lld scored) in %.2f s: %.1f tokens/s; peak memory %.1f MiB, pool %.2f MiB/stream\n",
                static_cast<long long>(r.tokens), static_cast<long long>(r.scored), r.seconds, r.tokens_per_second,
                peak / 1048576.0, r.pool_bytes_per_stream / 1048576.0);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace trams::engine

int main(int argc, char** argv) {
  trams::engine::SetFlagsUsageForMainFile(__FILE__);
  absl::SetProgramUsageMessage(
      "Scores a text with Transformer-XL + TRAMS (see README.md).\n"
      "  trams-eval --model DIR --input FILE [--mode xl|trams|none] [--mem_len M] [--topk K --remain R]");
  absl::ParseCommandLine(argc, argv);
  absl::Status s = trams::engine::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "trams-eval: %s\n", std::string(s.message()).c_str());
    return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
