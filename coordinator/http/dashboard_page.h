#pragma once
// The dashboard served at GET /: one self-contained HTML page (no external
// assets), built into the binary from coordinator/http/dashboard.html.
#include <string_view>

namespace tandem {

std::string_view DashboardHtml();

}  // namespace tandem
