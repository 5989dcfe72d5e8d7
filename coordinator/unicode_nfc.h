#pragma once
// Unicode Normalization Form C (canonical decomposition, then canonical
// composition), for tokenizers whose normalizer is NFC. Tables come from
// unicode_nfc_tables.cc (see tools/gen-unicode-nfc-tables).
#include <string>
#include <string_view>

namespace tandem {

// `valid_utf8` must be well-formed UTF-8 (see SanitizeUtf8). Thread-safe.
std::string NormalizeNfc(std::string_view valid_utf8);

}  // namespace tandem
