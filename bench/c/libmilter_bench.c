/*
 * The benchmark milter on Debian's libmilter (bench/run.sh): continues at every stage, asks for
 * SMFIF_ADDHDRS and adds "X-Bench: 1" at end of message, exactly like
 * milterkit/examples/bench_milter.rs and bench/c/ceiling.c.
 *
 * Every callback is registered (each only answers SMFIS_CONTINUE) so that the MTA sends and
 * waits for a reply to every stage, as it does for the other contestants.
 *
 * Usage: libmilter_bench SOCKET      (unix:/path or inet:PORT@127.0.0.1); SIGINT/SIGTERM stop it.
 */
#include <stdio.h>
#include <libmilter/mfapi.h>

#include "../../testdata/c/milter_main.h"

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
	(void)ctx; (void)host; (void)addr;
	return SMFIS_CONTINUE;
}

static sfsistat on_helo(SMFICTX *ctx, char *name)
{
	(void)ctx; (void)name;
	return SMFIS_CONTINUE;
}

static sfsistat on_args(SMFICTX *ctx, char **argv)
{
	(void)ctx; (void)argv;
	return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
	(void)ctx; (void)name; (void)value;
	return SMFIS_CONTINUE;
}

static sfsistat on_ctx(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	(void)ctx; (void)chunk; (void)len;
	return SMFIS_CONTINUE;
}

static sfsistat on_eom(SMFICTX *ctx)
{
	if (smfi_addheader(ctx, "X-Bench", "1") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	return SMFIS_CONTINUE;
}

static sfsistat on_unknown(SMFICTX *ctx, const char *line)
{
	(void)ctx; (void)line;
	return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
	"milterkit-bench",
	SMFI_VERSION,
	SMFIF_ADDHDRS,
	on_connect,
	on_helo,
	on_args,     /* envfrom */
	on_args,     /* envrcpt */
	on_header,
	on_ctx,      /* eoh */
	on_body,
	on_eom,
	on_ctx,      /* abort */
	on_ctx,      /* close */
	on_unknown,
	on_ctx,      /* data */
	NULL,        /* negotiate: libmilter's default */
};

int main(int argc, char **argv)
{
	return milter_main(argc, argv, &desc);
}
