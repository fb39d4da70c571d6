/* The main() of a libmilter milter serving one socket given on the command line, `PROG SOCKET`
 * (unix:/path or inet:PORT@HOST): shared by testdata/c/allactions.c and
 * bench/c/libmilter_bench.c, which each define `desc` and call it from their main(). */
#include <stdio.h>
#include <libmilter/mfapi.h>

static int milter_main(int argc, char **argv, struct smfiDesc *desc)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
		return 2;
	}
	if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(*desc) == MI_FAILURE) {
		fprintf(stderr, "cannot set up the milter\n");
		return 1;
	}
	if (smfi_opensocket(1) == MI_FAILURE) {
		fprintf(stderr, "cannot open %s\n", argv[1]);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
