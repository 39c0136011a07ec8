// RETURN_IF_ERROR / ASSIGN_OR_RETURN: Debian 12's Abseil (20220623) does not ship them.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TRAMS_CONCAT_INNER(a, b) a##b
#define TRAMS_CONCAT(a, b) TRAMS_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status _trams_status = (expr);     \
    if (!_trams_status.ok()) return _trams_status; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(TRAMS_CONCAT(_trams_statusor_, __LINE__), lhs, expr)

#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
