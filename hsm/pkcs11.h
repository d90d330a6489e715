// The one place that includes the PKCS#11 header (p11-kit's, v2.40 names).
#ifndef CARDVAULT_HSM_PKCS11_H_
#define CARDVAULT_HSM_PKCS11_H_

#include <p11-kit/pkcs11.h>

#endif  // CARDVAULT_HSM_PKCS11_H_
