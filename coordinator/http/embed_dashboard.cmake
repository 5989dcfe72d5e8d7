# Writes OUTPUT: a C++ file defining tandem::DashboardHtml() over the bytes of
# INPUT (coordinator/http/dashboard.html), run at build time by CMakeLists.txt.
file(READ "${INPUT}" html)
string(FIND "${html}" ")tandem_html\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw-string delimiter )tandem_html\"")
endif()
file(WRITE "${OUTPUT}.tmp"
  "// Generated from coordinator/http/dashboard.html by embed_dashboard.cmake.\n"
  "#include \"coordinator/http/dashboard_page.h\"\n\n"
  "namespace tandem {\n\n"
  "std::string_view DashboardHtml() {\n"
  "  static constexpr char kHtml[] = R\"tandem_html(${html})tandem_html\";\n"
  "  return std::string_view(kHtml, sizeof(kHtml) - 1);\n"
  "}\n\n"
  "}  // namespace tandem\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
