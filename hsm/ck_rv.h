// Conversion of PKCS#11 return values to absl::Status. This is the only place
// a CK_RV becomes a status; everything above hsm/ sees absl::Status.
#ifndef CARDVAULT_HSM_CK_RV_H_
#define CARDVAULT_HSM_CK_RV_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "hsm/pkcs11.h"

namespace cardvault::hsm {

// The CKR_ name of `rv`, e.g. "CKR_KEY_UNEXTRACTABLE", or its hex value.
std::string CkRvName(CK_RV rv);

// Maps `rv` from the PKCS#11 function `operation` to the most specific
// status code. Device and session failures map to UNAVAILABLE so callers can
// tell "HSM unreachable" from "request wrong".
absl::Status CkRvToStatus(CK_RV rv, absl::string_view operation);

}  // namespace cardvault::hsm

#endif  // CARDVAULT_HSM_CK_RV_H_
