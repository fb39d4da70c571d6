/*
 * The "ceiling" contestant of bench/run.sh: the least a milter can do for the benchmark's
 * behaviour, with no milter library. One thread, epoll, level-triggered.
 *
 * - OPTNEG: reads the MTA's offer and answers with fixed bits: version 6, SMFIF_ADDHDRS, no
 *   protocol flags (so every stage is sent and answered); the agreed protocol flags are kept and
 *   a stage whose no-reply flag was agreed gets no answer.
 * - Every reply-bearing command (CONNECT, HELO, MAIL, RCPT, DATA, HEADER, EOH, BODY, UNKNOWN) is
 *   answered with CONTINUE ('c'); at EOM it sends ADD_HEADER "X-Bench: 1" ('h') then 'c'.
 * - MACRO, ABORT and QUIT_NC need no reply; QUIT closes.
 * - All answers of one read ("turn") go out in ONE write; TCP_NODELAY is set on TCP.
 *
 * Usage: ceiling SOCKET      (unix:/path, local:/path, inet:PORT@HOST or inet:PORT)
 * SIGINT/SIGTERM stop it cleanly (so valgrind can write its profile).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Protocol constants (the milter protocol, version 6). */
#define SMFIF_ADDHDRS 0x01u
#define SMFIP_NR_HDR 0x00000080u
#define SMFIP_NR_CONN 0x00001000u
#define SMFIP_NR_HELO 0x00002000u
#define SMFIP_NR_MAIL 0x00004000u
#define SMFIP_NR_RCPT 0x00008000u
#define SMFIP_NR_DATA 0x00010000u
#define SMFIP_NR_UNKN 0x00020000u
#define SMFIP_NR_EOH 0x00040000u
#define SMFIP_NR_BODY 0x00080000u

/* What this responder asks for: no protocol flags at all. */
#define REQUESTED_PFLAGS 0u
/* Largest frame accepted (libmilter's largest negotiable size, 1 MiB). */
#define MAX_FRAME (1u << 20)
/* Read buffer shared by all connections: a connection keeps its own only for a partial frame. */
#define SCRATCH (256u * 1024u)
/* Answers of one turn are collected here and written once. */
#define OUTBUF (64u * 1024u)

struct conn {
	int fd;
	int tcp;
	uint32_t pflags;      /* agreed protocol flags */
	unsigned char *in;    /* a partial frame carried over to the next read */
	size_t len, cap;
	unsigned char *out;   /* answers the socket did not take yet (rare) */
	size_t out_len;
};

static volatile sig_atomic_t stopping;
static unsigned char scratch[SCRATCH];
static unsigned char outbuf[OUTBUF];
static size_t out_len;
static int ep;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static void close_conn(struct conn *c)
{
	out_len = 0; /* answers of a connection that failed are never sent to another */
	close(c->fd);
	free(c->in);
	free(c->out);
	free(c);
}

/* Writes everything in outbuf once; keeps what the socket did not take. 0 on success. */
static int flush(struct conn *c)
{
	if (out_len == 0)
		return 0;
	ssize_t n = write(c->fd, outbuf, out_len);
	if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
		return -1;
	if (n < 0)
		n = 0;
	if ((size_t)n < out_len) {
		size_t rest = out_len - (size_t)n;
		unsigned char *o = realloc(c->out, c->out_len + rest);
		if (o == NULL)
			return -1;
		memcpy(o + c->out_len, outbuf + n, rest);
		c->out = o;
		c->out_len += rest;
		struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
		epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
	}
	out_len = 0;
	return 0;
}

static int answer(struct conn *c, unsigned char code, const void *payload, uint32_t plen)
{
	if (out_len + 5 + plen > OUTBUF && flush(c) < 0)
		return -1;
	put32(outbuf + out_len, plen + 1);
	outbuf[out_len + 4] = code;
	if (plen)
		memcpy(outbuf + out_len + 5, payload, plen);
	out_len += 5 + plen;
	return 0;
}

static uint32_t no_reply_flag(unsigned char cmd)
{
	switch (cmd) {
	case 'C': return SMFIP_NR_CONN;
	case 'H': return SMFIP_NR_HELO;
	case 'M': return SMFIP_NR_MAIL;
	case 'R': return SMFIP_NR_RCPT;
	case 'T': return SMFIP_NR_DATA;
	case 'L': return SMFIP_NR_HDR;
	case 'N': return SMFIP_NR_EOH;
	case 'B': return SMFIP_NR_BODY;
	case 'U': return SMFIP_NR_UNKN;
	default: return 0;
	}
}

/*
 * Handles every complete frame in buf[0..len); returns the bytes consumed, or -1 to close
 * (QUIT, malformed input, write error).
 */
static long handle(struct conn *c, const unsigned char *buf, size_t len)
{
	static const unsigned char header[] = "X-Bench\0" "1";   /* name NUL value NUL */
	size_t at = 0;
	while (len - at >= 4) {
		uint32_t flen = get32(buf + at);
		if (flen == 0 || flen > MAX_FRAME)
			return -1;
		if (len - at - 4 < flen)
			break;
		unsigned char cmd = buf[at + 4];
		const unsigned char *p = buf + at + 5;
		uint32_t plen = flen - 1;
		at += 4 + flen;
		switch (cmd) {
		case 'O': {
			if (plen < 12)
				return -1;
			unsigned char reply[12];
			c->pflags = get32(p + 8) & REQUESTED_PFLAGS;
			put32(reply, 6);
			put32(reply + 4, SMFIF_ADDHDRS);
			put32(reply + 8, c->pflags);
			if (answer(c, 'O', reply, sizeof reply) < 0)
				return -1;
			break;
		}
		case 'D': /* macros */
		case 'A': /* abort */
		case 'K': /* quit, new connection follows */
			break;
		case 'Q':
			flush(c);
			return -1;
		case 'E':
			if (answer(c, 'h', header, sizeof header) < 0 || answer(c, 'c', NULL, 0) < 0)
				return -1;
			break;
		case 'C': case 'H': case 'M': case 'R': case 'T':
		case 'L': case 'N': case 'B': case 'U':
			if (!(c->pflags & no_reply_flag(cmd)) && answer(c, 'c', NULL, 0) < 0)
				return -1;
			break;
		default:
			return -1;
		}
	}
	return (long)at;
}

/* One readiness event: one read, every complete frame answered, one write. 0 to keep going. */
static int on_readable(struct conn *c)
{
	long used;
	ssize_t n;
	if (c->len == 0) {
		n = read(c->fd, scratch, sizeof scratch);
		if (n <= 0)
			return n < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : -1;
		used = handle(c, scratch, (size_t)n);
		if (used < 0)
			return -1;
		if ((size_t)used < (size_t)n) {
			size_t rest = (size_t)n - (size_t)used;
			size_t want = rest < 4096 ? 4096 : rest;
			if (rest >= 4 && get32(scratch + used) + 4 > want)
				want = get32(scratch + used) + 4;
			c->in = malloc(want);
			if (c->in == NULL)
				return -1;
			c->cap = want;
			memcpy(c->in, scratch + used, rest);
			c->len = rest;
		}
	} else {
		if (c->len >= 4) {
			size_t want = (size_t)get32(c->in) + 4;
			if (want > c->cap && want <= MAX_FRAME + 4) {
				unsigned char *in = realloc(c->in, want);
				if (in == NULL)
					return -1;
				c->in = in;
				c->cap = want;
			}
		}
		n = read(c->fd, c->in + c->len, c->cap - c->len);
		if (n <= 0)
			return n < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : -1;
		c->len += (size_t)n;
		used = handle(c, c->in, c->len);
		if (used < 0)
			return -1;
		c->len -= (size_t)used;
		if (c->len == 0) {
			free(c->in);
			c->in = NULL;
			c->cap = 0;
		} else {
			memmove(c->in, c->in + used, c->len);
		}
	}
	return flush(c);
}

static int on_writable(struct conn *c)
{
	ssize_t n = write(c->fd, c->out, c->out_len);
	if (n < 0)
		return errno == EAGAIN ? 0 : -1;
	c->out_len -= (size_t)n;
	memmove(c->out, c->out + n, c->out_len);
	if (c->out_len == 0) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
		epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
	}
	return 0;
}

static int listen_on(const char *spec, int *tcp, char *unix_path, size_t path_size)
{
	int fd, one = 1;
	if (strncmp(spec, "unix:", 5) == 0 || strncmp(spec, "local:", 6) == 0) {
		const char *path = strchr(spec, ':') + 1;
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		if (strlen(path) >= sizeof sa.sun_path || strlen(path) >= path_size)
			return -1;
		strcpy(sa.sun_path, path);
		strcpy(unix_path, path);
		unlink(path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
			return -1;
		*tcp = 0;
	} else if (strncmp(spec, "inet:", 5) == 0) {
		struct sockaddr_in sa = { .sin_family = AF_INET };
		const char *at = strchr(spec, '@');
		sa.sin_port = htons((uint16_t)atoi(spec + 5));
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (at != NULL && inet_pton(AF_INET, at + 1, &sa.sin_addr) != 1)
			return -1;
		fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
			return -1;
		*tcp = 1;
	} else {
		return -1;
	}
	if (listen(fd, SOMAXCONN) < 0)
		return -1;
	return fd;
}

int main(int argc, char **argv)
{
	char unix_path[108] = "";
	int tcp, one = 1;
	if (argc != 2) {
		fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
		return 2;
	}
	int lfd = listen_on(argv[1], &tcp, unix_path, sizeof unix_path);
	if (lfd < 0) {
		fprintf(stderr, "cannot listen on %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) {
		perror("epoll");
		return 1;
	}
	struct epoll_event events[256];
	while (!stopping) {
		int n = epoll_wait(ep, events, 256, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("epoll_wait");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = events[i].data.ptr;
			if (c == NULL) {
				int fd;
				while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					if (tcp)
						setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					c = calloc(1, sizeof *c);
					if (c == NULL) {
						close(fd);
						continue;
					}
					c->fd = fd;
					c->tcp = tcp;
					struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
					if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
						close_conn(c);
				}
				continue;
			}
			int r = 0;
			if (events[i].events & EPOLLOUT)
				r = on_writable(c);
			if (r == 0 && events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
				r = on_readable(c);
			if (r < 0)
				close_conn(c);
		}
	}
	if (unix_path[0])
		unlink(unix_path);
	return 0;
}
