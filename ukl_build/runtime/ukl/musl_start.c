// SPDX-License-Identifier: MIT
/*
 * Entry of a UKL program on musl.  The kernel calls ukl_app_main(argc, argv,
 * envp); for musl programs ukl-build binds that name to this function and
 * the program's own main() to another.  musl's __libc_start_main() expects
 * what exec leaves on a user stack: argv, NULL, envp, NULL, then the
 * auxiliary vector.  This builds it, with the entries musl reads:
 *
 * - AT_PAGESZ: malloc and mmap round with it;
 * - AT_RANDOM: 16 random bytes for the stack protector's canary;
 * - AT_PHDR/AT_PHENT/AT_PHNUM: one PT_TLS program header for the program's
 *   TLS image.  A program linked into vmlinux has no program headers of its
 *   own; app.lds gathers its .tdata and .tbss into one section and names its
 *   bounds and alignment, which are also what the kernel link computes the
 *   program's %fs offsets from.
 *
 * Nothing here may use musl before __libc_start_main(): the thread pointer
 * is not set up yet, so even errno is out of reach.
 */
#include <elf.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>

#define GRND_INSECURE	0x0004	/* never blocks, even before the pool is ready */
#define UKL_AUX_ENTRIES	6

long __ukl_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6);
int __libc_start_main(int (*main)(int, char **, char **), int argc, char **argv,
		      void (*init)(void), void (*fini)(void), void (*ldso)(void));
int main(int argc, char **argv, char **envp);
int __ukl_start(int argc, char **argv, char **envp);

extern char __ukl_tls_start[], __ukl_tls_end[];	/* app.lds */
extern const unsigned long __ukl_tls_align;	/* app.lds: a word of .rodata */

/* Keeps the TLS section (and its flag) in every program, even without __thread. */
__attribute__((used)) static __thread char ukl_tls_anchor = 1;

static Elf64_Phdr ukl_tls_phdr;

int __ukl_start(int argc, char **argv, char **envp)
{
	size_t envc = 0, n = 0, i;
	unsigned char random[16] = { 0 };

	while (envp[envc])
		envc++;

	size_t vec[argc + 1 + envc + 1 + 2 * UKL_AUX_ENTRIES + 2];

	for (i = 0; i < (size_t)argc; i++)
		vec[n++] = (size_t)argv[i];
	vec[n++] = 0;
	for (i = 0; i < envc; i++)
		vec[n++] = (size_t)envp[i];
	vec[n++] = 0;

	ukl_tls_phdr.p_type = PT_TLS;
	ukl_tls_phdr.p_flags = PF_R;
	ukl_tls_phdr.p_vaddr = (uintptr_t)__ukl_tls_start;
	ukl_tls_phdr.p_filesz = (uintptr_t)(__ukl_tls_end - __ukl_tls_start);
	ukl_tls_phdr.p_memsz = ukl_tls_phdr.p_filesz;
	ukl_tls_phdr.p_align = __ukl_tls_align;
	__ukl_syscall(SYS_getrandom, (long)random, sizeof(random), GRND_INSECURE, 0, 0, 0);

	vec[n++] = AT_PHDR;	vec[n++] = (size_t)&ukl_tls_phdr;
	vec[n++] = AT_PHENT;	vec[n++] = sizeof(ukl_tls_phdr);
	vec[n++] = AT_PHNUM;	vec[n++] = 1;
	vec[n++] = AT_PAGESZ;	vec[n++] = 4096;
	vec[n++] = AT_RANDOM;	vec[n++] = (size_t)random;
	vec[n++] = AT_EXECFN;	vec[n++] = (size_t)(argc ? argv[0] : "");
	vec[n++] = AT_NULL;	vec[n++] = 0;

	/* Never returns: musl's exit() ends in exit_group, which ends the machine. */
	return __libc_start_main(main, argc, (char **)vec, 0, 0, 0);
}
