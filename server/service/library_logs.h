// Sends what gRPC core and protobuf log through cardvaultd's own logger.
//
// Both write to stderr by themselves, and quote what a peer sent: gRPC the
// value of a malformed metadata header (a PAN, a newline and a forged log
// line included), protobuf the field of every request that is not UTF-8.
// Routed here, each line is masked (digits grouped by separators too),
// escaped, bounded, and let through at most kLibraryLinesPerSecond; the
// messages any peer can cause at will (a TLS server name that matches no
// certificate) at most kPeerNoiseLinesPerSecond, apart.
#ifndef CARDVAULT_SERVER_SERVICE_LIBRARY_LOGS_H_
#define CARDVAULT_SERVER_SERVICE_LIBRARY_LOGS_H_

namespace cardvault::service {

inline constexpr double kLibraryLinesPerSecond = 20;
inline constexpr double kPeerNoiseLinesPerSecond = 1;

// Installs the handlers; call once, before any gRPC or protobuf use.
void RouteLibraryLogs();

}  // namespace cardvault::service

#endif  // CARDVAULT_SERVER_SERVICE_LIBRARY_LOGS_H_
