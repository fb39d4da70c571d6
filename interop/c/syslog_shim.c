/*
 * syslog_shim.c: an LD_PRELOAD library that replaces syslog(3) for the interop tests.
 *
 * The machines that run the tests have no syslog daemon, and Sendmail logs only through
 * syslog(3). This library appends every line to the file named by MILTERKIT_SYSLOG_FILE.
 *
 * - The variable is read in a constructor, at load time: Sendmail clears its environment
 *   early in main(), before it logs anything.
 * - The file is opened for every line (Sendmail closes descriptors it does not know) and each
 *   line goes out in one O_APPEND write, so the daemon and its forked children do not
 *   interleave partial lines.
 * - "%m" expands to strerror(errno) as syslog(3) does.
 * - Debian builds Sendmail with _FORTIFY_SOURCE, so it calls __syslog_chk; both the plain and
 *   the fortified entry points are provided.
 *
 * Build: gcc -shared -fPIC -O2 -Wall -o syslog_shim.so syslog_shim.c
 */
#define _GNU_SOURCE
#undef _FORTIFY_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

void __syslog_chk(int pri, int flag, const char *fmt, ...);
void __vsyslog_chk(int pri, int flag, const char *fmt, va_list ap);

static char shim_path[4096];
static char shim_ident[64] = "syslog";

__attribute__((constructor)) static void shim_init(void)
{
    const char *path = getenv("MILTERKIT_SYSLOG_FILE");
    if (path != NULL && strlen(path) < sizeof shim_path)
        memcpy(shim_path, path, strlen(path) + 1);
}

static const char *shim_level(int pri)
{
    static const char *const names[] = {"emerg", "alert", "crit", "err",
                                        "warning", "notice", "info", "debug"};
    return names[LOG_PRI(pri)];
}

/* A copy of fmt with every %m replaced by the error text (its own % signs doubled), or NULL
 * when fmt has no %m (or memory is short: then %m is left to vsnprintf, which prints "m"). */
static char *shim_expand_m(const char *fmt, int err)
{
    const char *text = strerror(err);
    size_t count = 0;
    for (const char *p = fmt; *p != '\0'; p++) {
        if (p[0] == '%' && p[1] == '%') {
            p++;
        } else if (p[0] == '%' && p[1] == 'm') {
            count++;
            p++;
        }
    }
    if (count == 0)
        return NULL;
    char *out = malloc(strlen(fmt) + count * 2 * strlen(text) + 1);
    if (out == NULL)
        return NULL;
    char *o = out;
    for (const char *p = fmt; *p != '\0'; p++) {
        if (p[0] == '%' && p[1] == '%') {
            *o++ = *p++;
            *o++ = *p;
        } else if (p[0] == '%' && p[1] == 'm') {
            for (const char *t = text; *t != '\0'; t++) {
                if (*t == '%')
                    *o++ = '%';
                *o++ = *t;
            }
            p++;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static void shim_vlog(int pri, const char *fmt, va_list ap)
{
    int saved = errno;
    if (shim_path[0] == '\0' || fmt == NULL) {
        errno = saved;
        return;
    }
    char line[8192];
    size_t cap = sizeof line - 1; /* room for the final newline */
    time_t now = time(NULL);
    struct tm tm;
    size_t n = 0;
    if (localtime_r(&now, &tm) != NULL)
        n = strftime(line, cap, "%b %e %H:%M:%S ", &tm);
    int w = snprintf(line + n, cap - n, "%s[%ld] %s: ", shim_ident, (long)getpid(),
                     shim_level(pri));
    if (w > 0)
        n = (size_t)w >= cap - n ? cap - 1 : n + (size_t)w;
    char *expanded = shim_expand_m(fmt, saved);
    w = vsnprintf(line + n, cap - n, expanded != NULL ? expanded : fmt, ap);
    free(expanded);
    if (w > 0)
        n = (size_t)w >= cap - n ? cap - 1 : n + (size_t)w;
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    line[n++] = '\n';
    int fd = open(shim_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t ignored = write(fd, line, n);
        (void)ignored;
        close(fd);
    }
    errno = saved;
}

void openlog(const char *ident, int option, int facility)
{
    (void)option;
    (void)facility;
    if (ident != NULL)
        snprintf(shim_ident, sizeof shim_ident, "%s", ident);
}

void closelog(void)
{
}

void vsyslog(int pri, const char *fmt, va_list ap)
{
    shim_vlog(pri, fmt, ap);
}

void syslog(int pri, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    shim_vlog(pri, fmt, ap);
    va_end(ap);
}

void __vsyslog_chk(int pri, int flag, const char *fmt, va_list ap)
{
    (void)flag;
    shim_vlog(pri, fmt, ap);
}

void __syslog_chk(int pri, int flag, const char *fmt, ...)
{
    va_list ap;
    (void)flag;
    va_start(ap, fmt);
    shim_vlog(pri, fmt, ap);
    va_end(ap);
}
