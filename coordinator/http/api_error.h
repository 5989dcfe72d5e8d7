#pragma once
// An error as OpenAI's API reports it: an HTTP status and
//   {"error": {"message", "type", "param", "code"}}.
#include <string>

#include "nlohmann/json.hpp"

namespace tandem {

struct ApiError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // the request field at fault; "" is written as null
  std::string code;   // a stable machine-readable code; "" is written as null
  int retry_after_s = 0;  // > 0: sent as Retry-After (429)

  nlohmann::json ToJson() const;

  // An error of `status` (type from the status: 400-class invalid_request_error,
  // 401 authentication_error, 429 rate_limit_error, 503 service_unavailable,
  // other 5xx server_error).
  static ApiError Make(int status, std::string code, std::string message);
  // 400 naming the parameter at fault.
  static ApiError BadParam(std::string param, std::string message);
  ApiError WithParam(std::string p) const;
  ApiError WithRetryAfter(int seconds) const;
};

}  // namespace tandem
