#include "coordinator/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "coordinator/unicode_nfc_tables.h"
#include "coordinator/utf8.h"

namespace tandem {
namespace {

// Hangul syllables decompose and compose algorithmically (Unicode ch. 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;

struct NfcData {
  absl::flat_hash_map<char32_t, uint8_t> ccc;
  absl::flat_hash_map<char32_t, std::pair<char32_t, char32_t>> decomposition;
  absl::flat_hash_map<uint64_t, char32_t> composition;  // (first << 32 | second) -> composite
  // Code points that may make a string differ from its NFC form: anything with
  // a decomposition, a non-zero combining class, or that composes with what
  // precedes it. Text without them is already NFC.
  absl::flat_hash_set<char32_t> unstable;
};

const NfcData& Data() {
  static const NfcData* data = [] {
    auto* d = new NfcData;
    using namespace unicode_internal;
    for (int i = 0; i < kNumCombiningClasses; ++i) {
      d->ccc[kCombiningClasses[i].cp] = kCombiningClasses[i].ccc;
      d->unstable.insert(kCombiningClasses[i].cp);
    }
    for (int i = 0; i < kNumDecompositions; ++i) {
      const Decomposition& e = kDecompositions[i];
      d->decomposition[e.cp] = {e.first, e.second};
      d->unstable.insert(e.cp);
      if (e.composes) {
        d->composition[(static_cast<uint64_t>(e.first) << 32) | e.second] = e.cp;
        d->unstable.insert(e.second);
      }
    }
    for (char32_t v = kVBase; v < kVBase + kVCount; ++v) d->unstable.insert(v);
    for (char32_t t = kTBase + 1; t < kTBase + kTCount; ++t) d->unstable.insert(t);
    return d;
  }();
  return *data;
}

uint8_t CombiningClassOf(const NfcData& d, char32_t cp) {
  if (cp < 0x300) return 0;
  auto it = d.ccc.find(cp);
  return it == d.ccc.end() ? 0 : it->second;
}

void Decompose(const NfcData& d, char32_t cp, std::vector<char32_t>* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const int s = static_cast<int>(cp - kSBase);
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  auto it = d.decomposition.find(cp);
  if (it == d.decomposition.end()) {
    out->push_back(cp);
    return;
  }
  Decompose(d, it->second.first, out);
  if (it->second.second != 0) Decompose(d, it->second.second, out);
}

// Returns the composite of (a, b) or 0 when they do not compose.
char32_t Compose(const NfcData& d, char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  auto it = d.composition.find((static_cast<uint64_t>(a) << 32) | b);
  return it == d.composition.end() ? 0 : it->second;
}

}  // namespace

std::string NormalizeNfc(std::string_view s) {
  const NfcData& d = Data();
  bool stable = true;
  for (size_t pos = 0; pos < s.size();) {
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    if (d.unstable.contains(NextCodePoint(s, &pos))) {
      stable = false;
      break;
    }
  }
  if (stable) return std::string(s);

  // Full canonical decomposition.
  std::vector<char32_t> cps;
  cps.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) Decompose(d, NextCodePoint(s, &pos), &cps);
  // Canonical ordering: stable sort of each run of non-starters by class.
  for (size_t i = 0; i < cps.size();) {
    if (CombiningClassOf(d, cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && CombiningClassOf(d, cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j, [&](char32_t a, char32_t b) {
      return CombiningClassOf(d, a) < CombiningClassOf(d, b);
    });
    i = j;
  }
  // Canonical composition.
  std::vector<char32_t> out;
  out.reserve(cps.size());
  int starter = -1;      // index in `out` of the last starter
  int last_class = -1;   // class of the last character appended after it
  for (char32_t cp : cps) {
    const int cls = CombiningClassOf(d, cp);
    if (starter >= 0) {
      const bool blocked = last_class != -1 && (last_class == 0 || last_class >= cls);
      if (!blocked) {
        const char32_t composite = Compose(d, out[starter], cp);
        if (composite != 0) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (cls == 0) {
      starter = static_cast<int>(out.size());
      last_class = -1;
    } else {
      last_class = cls;
    }
    out.push_back(cp);
  }
  std::string result;
  result.reserve(s.size());
  for (char32_t cp : out) AppendUtf8(cp, &result);
  return result;
}

}  // namespace tandem
