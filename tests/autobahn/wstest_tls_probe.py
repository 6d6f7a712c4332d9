"""One TLS handshake with the TLS stack and settings of wstest's fuzzing client (Python 2).

For a server entry with a "hostname", `wstest -m fuzzingclient` connects with Twisted's
`optionsForClientTLS(hostname)`: pyOpenSSL, the platform's trust roots (OpenSSL's default
paths, so SSL_CERT_FILE), and the name checked by service_identity. This makes the same
handshake once, so that the harness learns before the run whether wstest will accept the
gateway's certificate, and can write down which protocol version and cipher it gets.
Prints "TLSv1.3 TLS_AES_256_GCM_SHA384 (OpenSSL 1.1.1i ...)"; exits non-zero on a failure.

    SSL_CERT_FILE=ca.pem py2/bin/python wstest_tls_probe.py 127.0.0.1 7443
"""

import socket
import sys
import warnings

warnings.simplefilter("ignore")  # cryptography's Python 2 deprecation warning

import OpenSSL
from OpenSSL import SSL
from twisted.internet import ssl


class Transport(object):
    """Stands in for Twisted's TLS transport: the name check reports its failure here."""

    failure = None

    def failVerification(self, reason):
        self.failure = reason


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    options = ssl.optionsForClientTLS(host.decode("ascii"))
    transport = Transport()
    sock = socket.create_connection((host, port), timeout=10)
    # pyOpenSSL over a socket with a timeout (non-blocking underneath) would raise
    # WantReadError; the harness bounds this whole process instead.
    sock.settimeout(None)
    try:
        conn = SSL.Connection(options._ctx, sock)
        conn.set_app_data(transport)
        conn.set_connect_state()
        try:
            conn.do_handshake()
        except SSL.Error as error:
            sys.exit("TLS handshake with %s:%d failed: %s" % (host, port, error))
        if transport.failure is not None:
            reason = transport.failure.getErrorMessage()
            sys.exit("the certificate is not for %s: %s" % (host, reason))
        print("%s %s (%s, pyOpenSSL %s)" % (
            conn.get_protocol_version_name(),
            conn.get_cipher_name(),
            SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode("ascii"),
            OpenSSL.__version__,
        ))
        conn.shutdown()
    finally:
        sock.close()


if __name__ == "__main__":
    main()
