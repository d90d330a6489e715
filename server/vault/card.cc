#include "server/vault/card.h"

namespace cardvault::vault {
namespace {

bool IsAsciiDigit(char c) { return c >= '0' && c <= '9'; }

// Decodes one UTF-8 code point at `s[*i]`; false on malformed, overlong or
// surrogate encodings.
bool NextCodePoint(absl::string_view s, size_t* i, uint32_t* cp) {
  const auto b0 = static_cast<unsigned char>(s[*i]);
  size_t len;
  uint32_t min;
  if (b0 < 0x80) {
    *cp = b0;
    *i += 1;
    return true;
  } else if ((b0 & 0xE0) == 0xC0) {
    len = 2, *cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, *cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, *cp = b0 & 0x07, min = 0x10000;
  } else {
    return false;
  }
  if (*i + len > s.size()) return false;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[*i + k]);
    if ((b & 0xC0) != 0x80) return false;
    *cp = (*cp << 6) | (b & 0x3F);
  }
  if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF)) {
    return false;
  }
  *i += len;
  return true;
}

bool IsControl(uint32_t cp) {
  return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F);
}

absl::Status ValidatePan(absl::string_view pan) {
  if (pan.empty()) return absl::InvalidArgumentError("card.pan is required");
  for (char c : pan) {
    if (!IsAsciiDigit(c)) {
      return absl::InvalidArgumentError(
          "card.pan must contain only ASCII digits 0-9 (no spaces, dashes or "
          "other separators)");
    }
  }
  if (pan.size() < kMinPanDigits || pan.size() > kMaxPanDigits) {
    return absl::InvalidArgumentError("card.pan must be 12 to 19 digits long");
  }
  if (!PassesLuhn(pan)) {
    return absl::InvalidArgumentError("card.pan fails the Luhn check");
  }
  return absl::OkStatus();
}

absl::Status ValidateExpiry(uint32_t month, uint32_t year, absl::Time now) {
  if (month == 0 && year == 0) return absl::OkStatus();
  if (month < 1 || month > 12) {
    return absl::InvalidArgumentError("card.exp_month must be 1 to 12");
  }
  const absl::CivilMonth current = absl::ToCivilMonth(now, absl::UTCTimeZone());
  if (year < kMinExpiryYear ||
      year > static_cast<uint32_t>(current.year()) + kMaxExpiryYearsAhead) {
    return absl::InvalidArgumentError(
        "card.exp_year must be a four-digit year within 50 years");
  }
  if (absl::CivilMonth(year, month) < current) {
    return absl::InvalidArgumentError("card has expired");
  }
  return absl::OkStatus();
}

absl::Status ValidateName(absl::string_view name) {
  if (name.size() > kMaxCardholderNameBytes) {
    return absl::InvalidArgumentError(
        "card.cardholder_name must be at most 128 bytes");
  }
  for (size_t i = 0; i < name.size();) {
    uint32_t cp = 0;
    if (!NextCodePoint(name, &i, &cp)) {
      return absl::InvalidArgumentError(
          "card.cardholder_name must be valid UTF-8");
    }
    if (IsControl(cp)) {
      return absl::InvalidArgumentError(
          "card.cardholder_name must not contain control characters");
    }
  }
  return absl::OkStatus();
}

// The first `n` digits of `pan` as a number (`pan` has at least 12).
int Prefix(absl::string_view pan, size_t n) {
  int v = 0;
  for (size_t i = 0; i < n; ++i) v = v * 10 + (pan[i] - '0');
  return v;
}

}  // namespace

CardBrand BrandOf(absl::string_view pan) {
  if (pan.size() < kMinPanDigits) return CardBrand::kUnknown;
  const int p2 = Prefix(pan, 2), p3 = Prefix(pan, 3), p4 = Prefix(pan, 4),
            p6 = Prefix(pan, 6);
  if (pan[0] == '4') return CardBrand::kVisa;
  if ((p2 >= 51 && p2 <= 55) || (p4 >= 2221 && p4 <= 2720)) {
    return CardBrand::kMastercard;
  }
  if (p2 == 34 || p2 == 37) return CardBrand::kAmex;
  if (p4 == 6011 || (p3 >= 644 && p3 <= 649) || p2 == 65 ||
      (p6 >= 622126 && p6 <= 622925)) {
    return p2 == 62 ? CardBrand::kUnionPay : CardBrand::kDiscover;
  }
  if (p4 >= 3528 && p4 <= 3589) return CardBrand::kJcb;
  if ((p3 >= 300 && p3 <= 305) || p2 == 36 || p2 == 38 || p2 == 39) {
    return CardBrand::kDinersClub;
  }
  if (p2 == 62) return CardBrand::kUnionPay;
  if (p2 == 50 || (p2 >= 56 && p2 <= 58) || p2 == 67 || p4 == 6304) {
    return CardBrand::kMaestro;
  }
  return CardBrand::kUnknown;
}

absl::Status ValidateCvv(absl::string_view cvv) {
  bool digits = true;
  for (char c : cvv) digits = digits && IsAsciiDigit(c);
  if (!digits || cvv.size() < kMinCvvDigits || cvv.size() > kMaxCvvDigits) {
    return absl::InvalidArgumentError("cvv must be 3 or 4 ASCII digits");
  }
  return absl::OkStatus();
}

absl::Status ValidateCard(const Card& card, absl::Time now) {
  if (absl::Status s = ValidatePan(card.pan.view()); !s.ok()) return s;
  if (absl::Status s = ValidateExpiry(card.exp_month, card.exp_year, now);
      !s.ok()) {
    return s;
  }
  return ValidateName(card.cardholder_name.view());
}

}  // namespace cardvault::vault
