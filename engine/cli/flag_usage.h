// --help for our programs. Abseil's --help lists the flags of files named like the binary or "main",
// and trams-eval's flags live in trams_eval.cc, so it printed "No flags matched". This points --help
// and --helpshort at the program's main source file (--helpfull still lists every flag, Abseil's too).
#pragma once

#include <string>
#include <string_view>

#include "absl/flags/usage_config.h"
#include "absl/strings/string_view.h"

namespace trams::engine {

// Call before absl::ParseCommandLine with the program's main file: __FILE__ or its basename
// ("trams_eval.cc"). Files are compared by basename, whatever path the build recorded.
inline void SetFlagsUsageForMainFile(std::string_view main_file) {
  auto basename = [](std::string_view path) {
    const size_t slash = path.find_last_of('/');
    return slash == std::string_view::npos ? path : path.substr(slash + 1);
  };
  const std::string base(basename(main_file));
  auto in_main_file = [base, basename](absl::string_view file) {
    return basename(std::string_view(file.data(), file.size())) == base;
  };
  absl::FlagsUsageConfig config;
  config.contains_helpshort_flags = in_main_file;
  config.contains_help_flags = in_main_file;
  absl::SetFlagsUsageConfig(config);
}

}  // namespace trams::engine
