/* A libmilter milter for the command-order differential test (interop/tests/order.rs): it logs
 * each callback with its argument, one line each, and decides from the argument (a word in it:
 * "reject", "tempfail", "accept", "discard", "skip"). At end of message it adds a header.
 * tests/order.rs holds its milterkit twin; both must log and answer the same for every order.
 * Usage: ordermilter SOCKET LOGFILE all|sparse
 *   all:    every stage, every reply, SMFIP_SKIP
 *   sparse: no HELO, DATA or EOH (SMFIP_NOHELO|NODATA|NOEOH), headers unanswered (SMFIP_NR_HDR) */
#include <libmilter/mfapi.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static FILE *out;
static int sparse;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void line(const char *fmt, ...) {
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&lock);
    fprintf(out, "%s\n", text);
    fflush(out);
    pthread_mutex_unlock(&lock);
}

static sfsistat decide(const char *arg) {
    if (strstr(arg, "reject")) return SMFIS_REJECT;
    if (strstr(arg, "tempfail")) return SMFIS_TEMPFAIL;
    if (strstr(arg, "accept")) return SMFIS_ACCEPT;
    if (strstr(arg, "discard")) return SMFIS_DISCARD;
    if (strstr(arg, "skip")) return SMFIS_SKIP;
    return SMFIS_CONTINUE;
}

static sfsistat x_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                            unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                            unsigned long *pf2, unsigned long *pf3) {
    (void)ctx; (void)f0; (void)f1; (void)f2; (void)f3;
    *pf0 = SMFIF_ADDHDRS;
    *pf1 = sparse ? (SMFIP_NOHELO | SMFIP_NODATA | SMFIP_NOEOH | SMFIP_NR_HDR) : SMFIP_SKIP;
    *pf2 = *pf3 = 0;
    return SMFIS_CONTINUE;
}
static sfsistat x_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa) {
    (void)ctx; (void)sa;
    line("connect %s", host);
    return decide(host);
}
static sfsistat x_helo(SMFICTX *ctx, char *name) {
    (void)ctx;
    line("helo %s", name);
    return decide(name);
}
static sfsistat x_envfrom(SMFICTX *ctx, char **argv) {
    (void)ctx;
    line("mail %s", argv[0]);
    return decide(argv[0]);
}
static sfsistat x_envrcpt(SMFICTX *ctx, char **argv) {
    (void)ctx;
    line("rcpt %s", argv[0]);
    return decide(argv[0]);
}
static sfsistat x_data(SMFICTX *ctx) {
    (void)ctx;
    line("data");
    return SMFIS_CONTINUE;
}
static sfsistat x_header(SMFICTX *ctx, char *name, char *value) {
    (void)ctx;
    line("header %s: %s", name, value);
    return sparse ? SMFIS_NOREPLY : decide(value);
}
static sfsistat x_eoh(SMFICTX *ctx) {
    (void)ctx;
    line("eoh");
    return SMFIS_CONTINUE;
}
static sfsistat x_body(SMFICTX *ctx, unsigned char *chunk, size_t len) {
    char text[64];
    (void)ctx;
    snprintf(text, sizeof text, "%.*s", (int)(len < 40 ? len : 40), (const char *)chunk);
    text[strcspn(text, "\r\n")] = 0;
    line("body %zu %s", len, text);
    return decide(text);
}
static sfsistat x_eom(SMFICTX *ctx) {
    line("eom");
    return smfi_addheader(ctx, "X-Order", "seen") == MI_SUCCESS ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
}
static sfsistat x_abort(SMFICTX *ctx) {
    (void)ctx;
    line("abort");
    return SMFIS_CONTINUE;
}
static sfsistat x_close(SMFICTX *ctx) {
    (void)ctx;
    line("close");
    return SMFIS_CONTINUE;
}
static sfsistat x_unknown(SMFICTX *ctx, const char *cmd) {
    (void)ctx;
    line("unknown %s", cmd);
    return decide(cmd);
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: ordermilter SOCKET LOGFILE all|sparse\n"); return 2; }
    out = fopen(argv[2], "a");
    if (!out) { perror(argv[2]); return 1; }
    sparse = strcmp(argv[3], "sparse") == 0;
    struct smfiDesc d = {
        "interop-order", SMFI_VERSION, SMFIF_ADDHDRS,
        x_connect, x_helo, x_envfrom, x_envrcpt, x_header, x_eoh, x_body, x_eom, x_abort, x_close,
        x_unknown, x_data, x_negotiate};
    umask(0);
    if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(d) == MI_FAILURE) return 1;
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
