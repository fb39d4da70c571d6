/* A libmilter milter that logs every callback with its arguments and the visible macros, one
 * line each, in the line format of interop/tests/differential.rs's milterkit milter (a subset of
 * the fixtures' ref-milter.log, without time stamps and counters). It changes nothing.
 * Usage: logmilter SOCKET LOGFILE  (SOCKET as libmilter spells it: unix:/path, inet:PORT@HOST) */
#include <arpa/inet.h>
#include <libmilter/mfapi.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "milterlog.h"

static FILE *out;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;


struct msg { int headers, chunks; unsigned long bytes; unsigned int hash; };


static char *e(const char *s) {
    static __thread char buf[65536 * 4 + 1];
    if (!s) s = "";
    size_t n = strlen(s);
    if (n > 65536) n = 65536;
    esc(buf, (const unsigned char *)s, n);
    return buf;
}

static void line(SMFICTX *ctx, const char *stage, const char *fmt, ...) {
    static __thread char text[65536 * 4 + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&lock);
    fprintf(out, "%s\n", text);
    if (stage)
        for (int i = 0; macros[i]; i++) {
            char *v = smfi_getsymval(ctx, (char *)macros[i]);
            if (v) fprintf(out, "macro stage=%s name=%s value=\"%s\"\n", stage, macros[i], e(v));
        }
    fflush(out);
    pthread_mutex_unlock(&lock);
}

static struct msg *m(SMFICTX *ctx) {
    struct msg *p = smfi_getpriv(ctx);
    if (!p) { p = calloc(1, sizeof *p); p->hash = 2166136261u; smfi_setpriv(ctx, p); }
    return p;
}

static sfsistat x_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa) {
    char addr[INET6_ADDRSTRLEN + 1] = "";
    int port = 0;
    const char *family = peer(sa, 1, addr, &port);
    line(ctx, "connect", "connect hostname=\"%s\" family=%s addr=\"%s\" port=%d", e(host), family, addr, port);
    return SMFIS_CONTINUE;
}
static sfsistat x_helo(SMFICTX *ctx, char *name) {
    line(ctx, "helo", "helo name=\"%s\"", e(name));
    return SMFIS_CONTINUE;
}
static sfsistat x_envfrom(SMFICTX *ctx, char **argv) {
    struct msg *p = m(ctx);
    memset(p, 0, sizeof *p);
    p->hash = 2166136261u;
    int n = 0;
    while (argv[n]) n++;
    line(ctx, "envfrom", "envfrom sender=\"%s\" nargs=%d", e(argv[0]), n - 1);
    return SMFIS_CONTINUE;
}
static sfsistat x_envrcpt(SMFICTX *ctx, char **argv) {
    line(ctx, "envrcpt", "envrcpt rcpt=\"%s\"", e(argv[0]));
    return SMFIS_CONTINUE;
}
static sfsistat x_data(SMFICTX *ctx) {
    line(ctx, "data", "data");
    return SMFIS_CONTINUE;
}
static sfsistat x_header(SMFICTX *ctx, char *name, char *value) {
    struct msg *p = m(ctx);
    p->headers++;
    char n[1024];
    esc(n, (const unsigned char *)name, strlen(name) > 200 ? 200 : strlen(name));
    line(ctx, NULL, "header index=%d name=\"%s\" value=\"%s\"", p->headers, n, e(value));
    return SMFIS_CONTINUE;
}
static sfsistat x_eoh(SMFICTX *ctx) {
    line(ctx, "eoh", "eoh headers=%d", m(ctx)->headers);
    return SMFIS_CONTINUE;
}
static sfsistat x_body(SMFICTX *ctx, unsigned char *chunk, size_t len) {
    struct msg *p = m(ctx);
    char head[200];
    p->chunks++;
    p->bytes += len;
    for (size_t i = 0; i < len; i++) p->hash = (p->hash ^ chunk[i]) * 16777619u;
    esc(head, chunk, len < 32 ? len : 32);
    line(ctx, NULL, "body chunk=%d len=%zu head=\"%s\"", p->chunks, len, head);
    return SMFIS_CONTINUE;
}
static sfsistat x_eom(SMFICTX *ctx) {
    struct msg *p = m(ctx);
    line(ctx, "eom", "eom body_chunks=%d body_bytes=%lu body_fnv=%08x", p->chunks, p->bytes, p->hash);
    return SMFIS_CONTINUE;
}
static sfsistat x_abort(SMFICTX *ctx) {
    line(ctx, NULL, "abort");
    return SMFIS_CONTINUE;
}
static sfsistat x_close(SMFICTX *ctx) {
    free(smfi_getpriv(ctx));
    smfi_setpriv(ctx, NULL);
    line(ctx, NULL, "close");
    return SMFIS_CONTINUE;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: logmilter SOCKET LOGFILE\n"); return 2; }
    out = fopen(argv[2], "a");
    if (!out) { perror(argv[2]); return 1; }
    struct smfiDesc d = {
        "interop-log", SMFI_VERSION, SMFIF_NONE,
        x_connect, x_helo, x_envfrom, x_envrcpt, x_header, x_eoh, x_body, x_eom, x_abort, x_close,
        NULL, x_data, NULL};
    umask(0); /* Postfix's smtpd (user postfix) must be able to connect to the socket */
    if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(d) == MI_FAILURE) return 1;
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
