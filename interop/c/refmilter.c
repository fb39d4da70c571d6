/* The reference milter of the project's captures (interop/src/capture.rs, `cargo run -p interop
 * --bin capture`): a libmilter milter that logs what libmilter hands each callback, with the
 * visible macros, and performs the actions a message asks for.
 *
 * Usage: refmilter SOCKET LOGFILE [-L] [-R] [-M]
 *   -L  ask for SMFIP_HDR_LEADSPC     -R  ask for SMFIP_RCPT_REJ
 *   -M  send macro lists (smfi_setsymlist) for all seven stages
 *
 * Log lines: "<unix time> c=<connection> m=<message> <what>", where <what> is one of
 *   negotiate actions=0x.. proto=0x.. f2=0x.. f3=0x..   (what the MTA offered)
 *   negotiate-reply actions=0x.. proto=0x..
 *   connect hostname="…" family=inet|inet6|unix|unknown addr="…" port=N
 *   helo name="…" | envfrom sender="…" nargs=N | envrcpt rcpt="…" | data
 *   header index=N name="…" value="…" | eoh headers=N
 *   body chunk=N len=N head="<first 32 bytes>" | eom body_chunks=N body_bytes=N body_crc32=0x........
 *   unknown cmd="…" | abort | close
 *   macro stage=<callback> name=<name> value="…"  (after connect, helo, envfrom, envrcpt, data, eoh,
 *                                                  eom and unknown: each macro of MACROS with a value)
 *   return cb=<callback> status=<SMFIS_*> | action op=<what> …
 * Strings are escaped: \\ \" \n \t \r, and \xNN outside printable ASCII.
 *
 * Decisions: MAIL from an address containing "reject-mail" is rejected, "custom-ml" gets a
 * three-line 550 reply, "custom" a 553 reply; RCPT to "reject-rcpt" is rejected, "tempfail-rcpt"
 * tempfailed, "custom-rcpt" gets a 550 5.1.1 reply. A header "X-Test-Actions" lists actions for
 * end of message, separated by "; " (values take C escapes \n \t \xNN \\):
 *   addheader:NAME:VALUE  insheader:INDEX:NAME:VALUE  chgheader:NAME:INDEX:VALUE
 *   delheader:NAME:INDEX  addrcpt:ADDR  addrcpt_par:ADDR:ARGS  delrcpt:ADDR  chgfrom:ADDR[:ARGS]
 *   replacebody:TEXT (\n becomes CRLF)  replacebody_lines:N (N lines of 55 bytes)
 *   quarantine:REASON  progress  skip (SMFIS_SKIP at the first body chunk)
 *   reject  tempfail  discard  replycode:CODE:XCODE:LINE|LINE|LINE */
#include <arpa/inet.h>
#include <libmilter/mfapi.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

#include "milterlog.h"

static FILE *out;
static int leadspc, rcptrej, symlist;
static int connections;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;


struct conn {
    int c, m, headers, chunks, skipped;
    unsigned long bytes;
    unsigned int crc;
    char *actions;
};

static unsigned int crc32_update(unsigned int crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

/* Escapes n bytes of s into a buffer of this thread; the result is valid until the next call
 * with the same slot (0 or 1). */
static const char *escaped(int slot, const char *s, size_t n) {
    static __thread char buf[2][65536 * 4 + 1];
    if (!s) s = "";
    if (n > 65536) n = 65536;
    esc(buf[slot], (const unsigned char *)s, n);
    return buf[slot];
}
static const char *e(const char *s) { return escaped(0, s, s ? strlen(s) : 0); }
static const char *e2(const char *s) { return escaped(1, s, s ? strlen(s) : 0); }

static struct conn *C(SMFICTX *ctx) {
    struct conn *p = smfi_getpriv(ctx);
    if (!p) {
        p = calloc(1, sizeof *p);
        pthread_mutex_lock(&lock);
        p->c = ++connections;
        pthread_mutex_unlock(&lock);
        smfi_setpriv(ctx, p);
    }
    return p;
}

static void logline(SMFICTX *ctx, const char *stage, const char *fmt, ...) {
    static __thread char text[65536 * 4 + 512];
    struct conn *p = C(ctx);
    struct timeval tv;
    va_list ap;
    gettimeofday(&tv, NULL);
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&lock);
    fprintf(out, "%ld.%06ld c=%d m=%d %s\n", (long)tv.tv_sec, (long)tv.tv_usec, p->c, p->m, text);
    if (stage)
        for (int i = 0; macros[i]; i++) {
            char *v = smfi_getsymval(ctx, (char *)macros[i]);
            if (v)
                fprintf(out, "%ld.%06ld c=%d m=%d macro stage=%s name=%s value=\"%s\"\n",
                        (long)tv.tv_sec, (long)tv.tv_usec, p->c, p->m, stage, macros[i], e(v));
        }
    fflush(out);
    pthread_mutex_unlock(&lock);
}

static const char *status(sfsistat r) {
    switch (r) {
    case SMFIS_CONTINUE: return "CONTINUE";
    case SMFIS_REJECT: return "REJECT";
    case SMFIS_DISCARD: return "DISCARD";
    case SMFIS_ACCEPT: return "ACCEPT";
    case SMFIS_TEMPFAIL: return "TEMPFAIL";
    case SMFIS_SKIP: return "SKIP";
    case SMFIS_NOREPLY: return "NOREPLY";
    default: return "OTHER";
    }
}

static sfsistat ret(SMFICTX *ctx, const char *cb, sfsistat r) {
    logline(ctx, NULL, "return cb=%s status=%s", cb, status(r));
    return r;
}

/* Decodes \n \t \r \\ \xNN in place. */
static void unescape(char *s) {
    char *d = s;
    while (*s) {
        if (*s == '\\' && s[1]) {
            s++;
            if (*s == 'n') *d++ = '\n';
            else if (*s == 't') *d++ = '\t';
            else if (*s == 'r') *d++ = '\r';
            else if (*s == 'x' && s[1] && s[2]) {
                char hex[3] = {s[1], s[2], 0};
                *d++ = (char)strtol(hex, NULL, 16);
                s += 2;
            } else *d++ = *s;
            s++;
        } else *d++ = *s++;
    }
    *d = 0;
}

/* Splits off the next field of s at ':' (the last field takes the rest). */
static char *field(char **s) {
    char *f = *s, *c = f ? strchr(f, ':') : NULL;
    if (c) { *c = 0; *s = c + 1; } else *s = NULL;
    return f;
}

static sfsistat x_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                            unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                            unsigned long *pf2, unsigned long *pf3) {
    logline(ctx, NULL, "negotiate actions=0x%lx proto=0x%lx f2=0x%lx f3=0x%lx", f0, f1, f2, f3);
    *pf0 = f0;
    *pf1 = f1 & (SMFIP_SKIP | (leadspc ? SMFIP_HDR_LEADSPC : 0) | (rcptrej ? SMFIP_RCPT_REJ : 0));
    *pf2 = *pf3 = 0;
    if (symlist) {
        /* What each stage can know: the client and daemon at CONNECT, TLS at HELO, and so on. */
        static const struct { int stage; const char *list; } lists[] = {
            {SMFIM_CONNECT, "j _ {daemon_name} {daemon_addr} {daemon_port} {if_name} {if_addr} "
                            "{client_addr} {client_port} {client_name} {client_ptr} "
                            "{client_resolve} v"},
            {SMFIM_HELO, "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer} "
                         "{client_addr}"},
            {SMFIM_ENVFROM, "i {auth_type} {auth_authen} {auth_author} {auth_ssf} {mail_mailer} "
                            "{mail_host} {mail_addr}"},
            {SMFIM_ENVRCPT, "i {rcpt_mailer} {rcpt_host} {rcpt_addr}"},
            {SMFIM_DATA, "i {nrcpts}"},
            {SMFIM_EOM, "i {msg_id} {msg_size}"},
            {SMFIM_EOH, "i {nrcpts}"},
        };
        for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
            int rc = smfi_setsymlist(ctx, lists[i].stage, (char *)lists[i].list);
            logline(ctx, NULL, "setsymlist stage=%d rc=%d", lists[i].stage, rc);
        }
    }
    logline(ctx, NULL, "negotiate-reply actions=0x%lx proto=0x%lx", *pf0, *pf1);
    return SMFIS_CONTINUE;
}

static sfsistat x_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa) {
    char addr[INET6_ADDRSTRLEN + 1] = "";
    int port = 0;
    const char *family = peer(sa, 0, addr, &port);
    logline(ctx, "connect", "connect hostname=\"%s\" family=%s addr=\"%s\" port=%d", e(host),
            family, addr, port);
    return ret(ctx, "connect", SMFIS_CONTINUE);
}

static sfsistat x_helo(SMFICTX *ctx, char *name) {
    logline(ctx, "helo", "helo name=\"%s\"", e(name));
    return ret(ctx, "helo", SMFIS_CONTINUE);
}

static sfsistat x_envfrom(SMFICTX *ctx, char **argv) {
    struct conn *p = C(ctx);
    int n = 0;
    p->m++;
    p->headers = p->chunks = p->skipped = 0;
    p->bytes = 0;
    p->crc = 0;
    free(p->actions);
    p->actions = NULL;
    while (argv[n]) n++;
    logline(ctx, "envfrom", "envfrom sender=\"%s\" nargs=%d", e(argv[0]), n - 1);
    if (strstr(argv[0], "reject-mail")) {
        logline(ctx, NULL, "action op=reject");
        return ret(ctx, "envfrom", SMFIS_REJECT);
    }
    if (strstr(argv[0], "custom-ml")) {
        int rc = smfi_setmlreply(ctx, "550", "5.7.1", "custom multi-line 1", "custom multi-line 2",
                                 "custom multi-line 3", NULL);
        logline(ctx, NULL, "action op=setreply code=\"550\" xcode=\"5.7.1\" lines=3 rc=%d", rc);
        return ret(ctx, "envfrom", SMFIS_REJECT);
    }
    if (strstr(argv[0], "custom")) {
        int rc = smfi_setreply(ctx, "553", "5.7.1", "Custom reply for MAIL FROM");
        logline(ctx, NULL, "action op=setreply code=\"553\" xcode=\"5.7.1\" lines=1 rc=%d", rc);
        return ret(ctx, "envfrom", SMFIS_REJECT);
    }
    return ret(ctx, "envfrom", SMFIS_CONTINUE);
}

static sfsistat x_envrcpt(SMFICTX *ctx, char **argv) {
    logline(ctx, "envrcpt", "envrcpt rcpt=\"%s\"", e(argv[0]));
    if (strstr(argv[0], "reject-rcpt")) return ret(ctx, "envrcpt", SMFIS_REJECT);
    if (strstr(argv[0], "tempfail-rcpt")) return ret(ctx, "envrcpt", SMFIS_TEMPFAIL);
    if (strstr(argv[0], "custom-rcpt")) {
        int rc = smfi_setreply(ctx, "550", "5.1.1", "Custom reply for RCPT TO");
        logline(ctx, NULL, "action op=setreply code=\"550\" xcode=\"5.1.1\" lines=1 rc=%d", rc);
        return ret(ctx, "envrcpt", SMFIS_REJECT);
    }
    return ret(ctx, "envrcpt", SMFIS_CONTINUE);
}

static sfsistat x_data(SMFICTX *ctx) {
    logline(ctx, "data", "data");
    return ret(ctx, "data", SMFIS_CONTINUE);
}

static sfsistat x_header(SMFICTX *ctx, char *name, char *value) {
    struct conn *p = C(ctx);
    p->headers++;
    logline(ctx, NULL, "header index=%d name=\"%s\" value=\"%s\"", p->headers, e(name), e2(value));
    if (strcasecmp(name, "X-Test-Actions") == 0) {
        const char *v = value;
        while (*v == ' ' || *v == '\t') v++; /* with HDR_LEADSPC the value keeps its space */
        free(p->actions);
        p->actions = strdup(v);
    }
    return ret(ctx, "header", SMFIS_CONTINUE);
}

static sfsistat x_eoh(SMFICTX *ctx) {
    logline(ctx, "eoh", "eoh headers=%d", C(ctx)->headers);
    return ret(ctx, "eoh", SMFIS_CONTINUE);
}

static sfsistat x_body(SMFICTX *ctx, unsigned char *chunk, size_t len) {
    struct conn *p = C(ctx);
    p->chunks++;
    p->bytes += len;
    p->crc = crc32_update(p->crc, chunk, len);
    logline(ctx, NULL, "body chunk=%d len=%zu head=\"%s\"", p->chunks, len,
            escaped(0, (const char *)chunk, len < 32 ? len : 32));
    if (p->actions && strstr(p->actions, "skip") && !p->skipped) {
        p->skipped = 1;
        logline(ctx, NULL, "action op=skip");
        return ret(ctx, "body", SMFIS_SKIP);
    }
    return ret(ctx, "body", SMFIS_CONTINUE);
}

/* Performs one action; sets *decision for the final ones. */
static void act(SMFICTX *ctx, char *a, sfsistat *decision) {
    char *rest = a, *op = field(&rest);
    int rc = 0;
    if (!strcmp(op, "addheader")) {
        char *name = field(&rest);
        unescape(rest ? rest : "");
        rc = smfi_addheader(ctx, name, rest ? rest : "");
        logline(ctx, NULL, "action op=addheader name=\"%s\" value=\"%s\" rc=%d", e(name), e2(rest), rc);
    } else if (!strcmp(op, "insheader")) {
        int idx = atoi(field(&rest));
        char *name = field(&rest);
        unescape(rest ? rest : "");
        rc = smfi_insheader(ctx, idx, name, rest ? rest : "");
        logline(ctx, NULL, "action op=insheader index=%d name=\"%s\" value=\"%s\" rc=%d", idx,
                e(name), e2(rest), rc);
    } else if (!strcmp(op, "chgheader")) {
        char *name = field(&rest);
        int idx = atoi(field(&rest));
        unescape(rest ? rest : "");
        rc = smfi_chgheader(ctx, name, idx, rest ? rest : "");
        logline(ctx, NULL, "action op=chgheader name=\"%s\" index=%d value=\"%s\" rc=%d", e(name),
                idx, e2(rest), rc);
    } else if (!strcmp(op, "delheader")) {
        char *name = field(&rest);
        int idx = atoi(rest ? rest : "1");
        rc = smfi_chgheader(ctx, name, idx, NULL);
        logline(ctx, NULL, "action op=delheader name=\"%s\" index=%d rc=%d", e(name), idx, rc);
    } else if (!strcmp(op, "addrcpt")) {
        rc = smfi_addrcpt(ctx, rest);
        logline(ctx, NULL, "action op=addrcpt rcpt=\"%s\" rc=%d", e(rest), rc);
    } else if (!strcmp(op, "addrcpt_par")) {
        char *addr = field(&rest);
        rc = smfi_addrcpt_par(ctx, addr, rest);
        logline(ctx, NULL, "action op=addrcpt_par rcpt=\"%s\" args=\"%s\" rc=%d", e(addr), e2(rest), rc);
    } else if (!strcmp(op, "delrcpt")) {
        rc = smfi_delrcpt(ctx, rest);
        logline(ctx, NULL, "action op=delrcpt rcpt=\"%s\" rc=%d", e(rest), rc);
    } else if (!strcmp(op, "chgfrom")) {
        char *addr = field(&rest);
        rc = smfi_chgfrom(ctx, addr, rest);
        logline(ctx, NULL, "action op=chgfrom sender=\"%s\" args=\"%s\" rc=%d", e(addr), e2(rest), rc);
    } else if (!strcmp(op, "replacebody")) {
        char *text = rest ? rest : "";
        unescape(text);
        size_t n = strlen(text), k = 0;
        char *crlf = malloc(2 * n + 1);
        for (size_t i = 0; i < n; i++) {
            if (text[i] == '\n' && (i == 0 || text[i - 1] != '\r')) crlf[k++] = '\r';
            crlf[k++] = text[i];
        }
        rc = smfi_replacebody(ctx, (unsigned char *)crlf, (int)k);
        logline(ctx, NULL, "action op=replacebody len=%zu rc=%d", k, rc);
        free(crlf);
    } else if (!strcmp(op, "replacebody_lines")) {
        int lines = atoi(rest ? rest : "0");
        size_t len = (size_t)lines * 55;
        char *body = malloc(len + 1);
        for (int i = 0; i < lines; i++) {
            char line[64];
            snprintf(line, sizeof line, "Replacement line %05d of the large body, padded.....\r\n",
                     (i + 1) % 100000);
            memcpy(body + (size_t)i * 55, line, 55);
        }
        rc = smfi_replacebody(ctx, (unsigned char *)body, (int)len);
        logline(ctx, NULL, "action op=replacebody_lines lines=%d len=%zu rc=%d", lines, len, rc);
        free(body);
    } else if (!strcmp(op, "quarantine")) {
        rc = smfi_quarantine(ctx, rest);
        logline(ctx, NULL, "action op=quarantine reason=\"%s\" rc=%d", e(rest), rc);
    } else if (!strcmp(op, "progress")) {
        rc = smfi_progress(ctx);
        logline(ctx, NULL, "action op=progress rc=%d", rc);
    } else if (!strcmp(op, "skip")) {
        /* done at the first body chunk */
    } else if (!strcmp(op, "reject") || !strcmp(op, "tempfail") || !strcmp(op, "discard")) {
        *decision = op[0] == 'r' ? SMFIS_REJECT : op[0] == 't' ? SMFIS_TEMPFAIL : SMFIS_DISCARD;
        logline(ctx, NULL, "action op=%s", op);
    } else if (!strcmp(op, "replycode")) {
        char *code = field(&rest), *xcode = field(&rest);
        char *l[3] = {NULL, NULL, NULL};
        int n = 0;
        for (char *t = strtok(rest ? rest : "", "|"); t && n < 3; t = strtok(NULL, "|")) l[n++] = t;
        rc = smfi_setmlreply(ctx, code, xcode, l[0], l[1], l[2], NULL);
        *decision = code[0] == '4' ? SMFIS_TEMPFAIL : SMFIS_REJECT;
        logline(ctx, NULL, "action op=setreply code=\"%s\" xcode=\"%s\" lines=%d rc=%d", code, xcode, n, rc);
    } else {
        logline(ctx, NULL, "action op=unknown text=\"%s\"", e(op));
    }
}

static sfsistat x_eom(SMFICTX *ctx) {
    struct conn *p = C(ctx);
    sfsistat decision = SMFIS_CONTINUE;
    logline(ctx, "eom", "eom body_chunks=%d body_bytes=%lu body_crc32=0x%08x", p->chunks, p->bytes,
            p->crc);
    if (p->actions) {
        char *list = strdup(p->actions), *save = NULL;
        for (char *a = strtok_r(list, ";", &save); a; a = strtok_r(NULL, ";", &save)) {
            while (*a == ' ') a++;
            act(ctx, a, &decision);
        }
        free(list);
    }
    return ret(ctx, "eom", decision);
}

static sfsistat x_abort(SMFICTX *ctx) {
    logline(ctx, NULL, "abort");
    return ret(ctx, "abort", SMFIS_CONTINUE);
}

static sfsistat x_close(SMFICTX *ctx) {
    struct conn *p = C(ctx);
    logline(ctx, NULL, "close");
    free(p->actions);
    free(p);
    smfi_setpriv(ctx, NULL);
    return SMFIS_CONTINUE;
}

static sfsistat x_unknown(SMFICTX *ctx, const char *cmd) {
    logline(ctx, "unknown", "unknown cmd=\"%s\"", e(cmd));
    return ret(ctx, "unknown", SMFIS_CONTINUE);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: refmilter SOCKET LOGFILE [-L] [-R] [-M]\n");
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "-L")) leadspc = 1;
        else if (!strcmp(argv[i], "-R")) rcptrej = 1;
        else if (!strcmp(argv[i], "-M")) symlist = 1;
        else { fprintf(stderr, "refmilter: unknown flag %s\n", argv[i]); return 2; }
    }
    out = fopen(argv[2], "a");
    if (!out) { perror(argv[2]); return 1; }
    struct smfiDesc d = {
        "milterkit-ref", SMFI_VERSION,
        SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_ADDRCPT_PAR |
            SMFIF_DELRCPT | SMFIF_CHGFROM | SMFIF_QUARANTINE | SMFIF_SETSYMLIST,
        x_connect, x_helo, x_envfrom, x_envrcpt, x_header, x_eoh, x_body, x_eom, x_abort, x_close,
        x_unknown, x_data, x_negotiate};
    umask(0); /* Postfix's smtpd (user postfix) connects to the socket */
    if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(d) == MI_FAILURE) return 1;
    fprintf(out, "0.000000 c=0 m=0 start socket=\"%s\" leadspc=%d rcptrej=%d symlist=%d\n", argv[1],
            leadspc, rcptrej, symlist);
    fflush(out);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
