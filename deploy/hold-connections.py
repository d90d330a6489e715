#!/usr/bin/env python3
"""Holds idle connections to a cardvaultd, for deploy/bench-connections.sh.

  hold-connections.py --port P --count N [--sources K] [--tls --pki DIR]

Opens N connections spread over source addresses 127.0.0.2 .. 127.0.0.(K+1).
Plain: TCP only, nothing sent (a peer that never starts TLS). --tls: a full
mutual-TLS handshake with DIR/pos.crt, the HTTP/2 preface and SETTINGS,
then idle; SETTINGS and keepalive PINGs are answered so the server keeps
them. Prints "holding M" once connected, then holds until killed.
"""
import argparse
import selectors
import socket
import ssl
import struct
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = struct.pack(">I", 0)[1:] + bytes([4, 0]) + struct.pack(">I", 0)


def frame(ftype, flags, payload=b""):
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) +
            struct.pack(">I", 0) + payload)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--sources", type=int, default=1)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--pki")
    a = p.parse_args()
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context(cafile=f"{a.pki}/ca.crt")
        ctx.load_cert_chain(f"{a.pki}/pos.crt", f"{a.pki}/pos.key")
        ctx.set_alpn_protocols(["h2"])
    held = []
    for i in range(a.count):
        source = f"127.0.0.{2 + i % a.sources}"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        try:
            s.connect(("127.0.0.1", a.port))
            if ctx:
                s = ctx.wrap_socket(s, server_hostname="localhost")
                s.sendall(PREFACE + SETTINGS)
        except OSError as e:
            print(f"connection {i} from {source}: {e}", file=sys.stderr)
            s.close()
            continue
        held.append(s)
    print(f"holding {len(held)}", flush=True)
    sel = selectors.DefaultSelector()
    buffers = {}
    for s in held:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        buffers[s] = b""
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                data = s.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                continue
            buf = buffers[s] + data
            while len(buf) >= 9:
                length = int.from_bytes(buf[0:3], "big")
                if len(buf) < 9 + length:
                    break
                ftype, flags = buf[3], buf[4]
                payload = buf[9:9 + length]
                buf = buf[9 + length:]
                try:
                    if ftype == 4 and not flags & 1:
                        s.sendall(frame(4, 1))
                    elif ftype == 6 and not flags & 1:
                        s.sendall(frame(6, 1, payload))
                except (ssl.SSLWantWriteError, OSError):
                    pass
            buffers[s] = buf


if __name__ == "__main__":
    main()
