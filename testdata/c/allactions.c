/*
 * A libmilter milter that performs every action, for milterkit's MTA-side tests.
 *
 * Usage: allactions SOCKET            (e.g. inet:8891@127.0.0.1 or unix:/tmp/a.sock)
 *
 * - RCPT <reject@example.net>: 550 5.7.1 "C milter says no" (smfi_setreply + SMFIS_REJECT);
 *   RCPT <tempfail@example.net>: SMFIS_TEMPFAIL.
 * - Subject containing "discard": SMFIS_DISCARD at end of message.
 * - Otherwise at end of message, in this order: progress, add header, insert header at 0,
 *   change Subject, delete X-Remove, change sender with arguments, add recipient, add recipient
 *   with arguments, delete <drop@example.net>, replace body, quarantine; then SMFIS_CONTINUE.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <libmilter/mfapi.h>

#include "milter_main.h"

struct priv {
	int discard;
};

static struct priv *get(SMFICTX *ctx)
{
	struct priv *p = smfi_getpriv(ctx);
	if (p == NULL) {
		p = calloc(1, sizeof *p);
		smfi_setpriv(ctx, p);
	}
	return p;
}

static sfsistat on_envfrom(SMFICTX *ctx, char **argv)
{
	(void)argv;
	get(ctx)->discard = 0;
	return SMFIS_CONTINUE;
}

static sfsistat on_envrcpt(SMFICTX *ctx, char **argv)
{
	if (strcasecmp(argv[0], "<reject@example.net>") == 0) {
		smfi_setreply(ctx, "550", "5.7.1", "C milter says no");
		return SMFIS_REJECT;
	}
	if (strcasecmp(argv[0], "<tempfail@example.net>") == 0)
		return SMFIS_TEMPFAIL;
	return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
	if (strcasecmp(name, "Subject") == 0 && strstr(value, "discard") != NULL)
		get(ctx)->discard = 1;
	return SMFIS_CONTINUE;
}

static sfsistat on_eom(SMFICTX *ctx)
{
	static unsigned char body[] = "Body replaced by the C milter.\r\n";
	if (get(ctx)->discard)
		return SMFIS_DISCARD;
	smfi_progress(ctx);
	smfi_addheader(ctx, "X-C-Added", "added by libmilter");
	smfi_insheader(ctx, 0, "X-C-Top", "inserted at 0");
	smfi_chgheader(ctx, "Subject", 1, "[C] changed subject");
	smfi_chgheader(ctx, "X-Remove", 1, NULL);
	smfi_chgfrom(ctx, "<c-bounce@example.org>", "RET=HDRS");
	smfi_addrcpt(ctx, "<c-added@example.org>");
	smfi_addrcpt_par(ctx, "<c-par@example.org>", "NOTIFY=NEVER");
	smfi_delrcpt(ctx, "<drop@example.net>");
	smfi_replacebody(ctx, body, sizeof body - 1);
	smfi_quarantine(ctx, "quarantined by the C milter");
	return SMFIS_CONTINUE;
}

static sfsistat on_close(SMFICTX *ctx)
{
	free(smfi_getpriv(ctx));
	smfi_setpriv(ctx, NULL);
	return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
	"milterkit-allactions",
	SMFI_VERSION,
	SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_ADDRCPT_PAR |
		SMFIF_DELRCPT | SMFIF_QUARANTINE | SMFIF_CHGFROM,
	NULL,        /* connect */
	NULL,        /* helo */
	on_envfrom,
	on_envrcpt,
	on_header,
	NULL,        /* eoh */
	NULL,        /* body */
	on_eom,
	NULL,        /* abort */
	on_close,
	NULL,        /* unknown */
	NULL,        /* data */
	NULL,        /* negotiate */
};

int main(int argc, char **argv)
{
	return milter_main(argc, argv, &desc);
}
