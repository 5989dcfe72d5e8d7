#include "coordinator/http/api_error.h"

namespace tandem {

nlohmann::json ApiError::ToJson() const {
  auto or_null = [](const std::string& s) { return s.empty() ? nlohmann::json() : nlohmann::json(s); };
  return {{"error",
           {{"message", message}, {"type", type}, {"param", or_null(param)}, {"code", or_null(code)}}}};
}

ApiError ApiError::Make(int status, std::string code, std::string message) {
  ApiError e;
  e.status = status;
  if (status == 401) {
    e.type = "authentication_error";
  } else if (status == 429) {
    e.type = "rate_limit_error";
  } else if (status == 503) {
    e.type = "service_unavailable";
  } else if (status >= 500) {
    e.type = "server_error";
  } else {
    e.type = "invalid_request_error";
  }
  e.code = std::move(code);
  e.message = std::move(message);
  return e;
}

ApiError ApiError::BadParam(std::string param, std::string message) {
  return Make(400, "invalid_value", std::move(message)).WithParam(std::move(param));
}

ApiError ApiError::WithParam(std::string p) const {
  ApiError e = *this;
  e.param = std::move(p);
  return e;
}

ApiError ApiError::WithRetryAfter(int seconds) const {
  ApiError e = *this;
  e.retry_after_s = seconds;
  return e;
}

}  // namespace tandem
