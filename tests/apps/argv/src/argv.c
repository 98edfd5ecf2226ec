// SPDX-License-Identifier: MIT
/* Prints argc and each argument as hex, so any byte that arrives is visible. */
#include <stdio.h>
#include <string.h>

#include "hex_pairs.h"	/* generated at build time: gen/hex_pairs.py */

int main(int argc, char **argv)
{
	int i;
	size_t j;

	printf("argc=%d\n", argc);
	for (i = 1; i < argc; i++) {
		printf("arg%d=", i);
		for (j = 0; j < strlen(argv[i]); j++) {	/* nolibc's printf has no %02x */
			unsigned char c = argv[i][j];

			putchar(hex_pairs[c][0]);
			putchar(hex_pairs[c][1]);
		}
		printf(".\n");
	}
	return 0;
}
