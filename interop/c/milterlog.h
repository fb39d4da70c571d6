/* What the logging C milters of interop/c/ share: the macro names they log at each callback,
 * the escaping of their log lines (\\ \" \n \t \r, and \xNN outside printable ASCII), the same
 * as the Rust twins' in interop/tests/ and milterkit-proto/tests/fixtures.rs, and the family,
 * address and port of their connect lines. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static const char *macros[] = {
    "i", "j", "v", "_", "{auth_type}", "{auth_authen}", "{auth_author}", "{auth_ssf}",
    "{cert_issuer}", "{cert_subject}", "{cipher}", "{cipher_bits}", "{client_addr}",
    "{client_name}", "{client_port}", "{client_ptr}", "{client_resolve}", "{daemon_addr}",
    "{daemon_name}", "{daemon_port}", "{if_addr}", "{if_name}", "{mail_addr}", "{mail_host}",
    "{mail_mailer}", "{msg_id}", "{msg_size}", "{nrcpts}", "{quarantine}", "{rcpt_addr}",
    "{rcpt_host}", "{rcpt_mailer}", "{tls_version}", NULL};

/* Writes n bytes of s, escaped, to dst (room for 4 * n + 1 bytes). */
static void esc(char *dst, const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '\\') { *dst++ = '\\'; *dst++ = '\\'; }
        else if (c == '"') { *dst++ = '\\'; *dst++ = '"'; }
        else if (c == '\n') { *dst++ = '\\'; *dst++ = 'n'; }
        else if (c == '\t') { *dst++ = '\\'; *dst++ = 't'; }
        else if (c == '\r') { *dst++ = '\\'; *dst++ = 'r'; }
        else if (c >= 0x20 && c <= 0x7e) *dst++ = (char)c;
        else dst += sprintf(dst, "\\x%02x", c);
    }
    *dst = 0;
}

/* The family of a connect callback's client address ("inet", "inet6", "unix" or "unknown"),
 * its address text into addr (room for INET6_ADDRSTRLEN + 1 bytes; left alone but for IP) and
 * its port into *port (left alone but for IP). With inet_only, every family but IPv4 is
 * "unknown" (logmilter.c's twin knows no other). */
static const char *peer(const struct sockaddr *sa, int inet_only, char *addr, int *port) {
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, addr, INET6_ADDRSTRLEN + 1);
        *port = ntohs(in->sin_port);
        return "inet";
    }
    if (inet_only || !sa) return "unknown";
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, addr, INET6_ADDRSTRLEN + 1);
        *port = ntohs(in6->sin6_port);
        return "inet6";
    }
    if (sa->sa_family == AF_UNIX) return "unix";
    return "unknown";
}
