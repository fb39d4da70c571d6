/* What the logging C milters of interop/c/ share: the macro names they log at each callback and
 * the escaping of their log lines (\\ \" \n \t \r, and \xNN outside printable ASCII), the same
 * as the Rust twins' in interop/tests/ and milterkit-proto/tests/fixtures.rs. */
#include <stdio.h>
#include <string.h>

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
