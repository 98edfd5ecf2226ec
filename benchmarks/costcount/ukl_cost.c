// SPDX-License-Identifier: MIT
/*
 * ukl_cost: a QEMU TCG plugin that counts the guest instructions executed,
 * exactly, by where they run and by the classes of instruction whose cost an
 * instruction count hides (a CR3 write or a syscall counts as one).
 *
 * Where: the first of the named address ranges read from ranges=FILE (lines
 * "NAME LOW HIGH", hexadecimal, HIGH exclusive) that holds the instruction's
 * address; else "kernel" (the upper half) or "user" (the lower half).  The
 * plugin API of QEMU 7.2 reads no registers, so the privilege level is not
 * seen: attribution is by address, and kernel ranges need a boot without
 * KASLR (the benchmark passes nokaslr).
 *
 * Classes, decoded from the instruction's bytes after its legacy and REX
 * prefixes: syscall, sysret, swapgs, iret, mov to CR3, wrmsr, lfence,
 * mfence, verw, other serialising instructions (cpuid, other control
 * register writes, invlpg, wbinvd), zeroing idioms (xor or sub of a
 * register with itself), and every other instruction.
 *
 * Counting is an inline add per executed instruction (no callback), into
 * one matrix shared by all vCPUs: run the guest with one vCPU, or the adds
 * of two vCPUs may race.  Snapshots: each line written to the control FIFO
 * (ctl=PATH) appends "snap LABEL" and the matrix to out=PATH, so that a
 * benchmark takes the counts of a window (before and after N requests).
 * The matrix is also written at exit, as "snap exit".
 *
 * usage: -plugin ukl_cost.so,out=FILE,ctl=FIFO[,ranges=FILE]
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

enum insn_class {
	C_OTHER, C_SYSCALL, C_SYSRET, C_SWAPGS, C_IRET, C_CR3, C_WRMSR,
	C_LFENCE, C_MFENCE, C_VERW, C_SERIALISING, C_ZERO_IDIOM, N_CLASSES
};

static const char *const class_names[N_CLASSES] = {
	"other", "syscall", "sysret", "swapgs", "iret", "cr3_write", "wrmsr",
	"lfence", "mfence", "verw", "serialising", "zero_idiom",
};

#define MAX_RANGES 30
#define N_REGIONS (MAX_RANGES + 2)

struct range {
	char name[64];
	uint64_t low, high;
};

static struct range ranges[MAX_RANGES];
static int n_ranges;
static uint64_t counts[N_REGIONS][N_CLASSES];
static FILE *out;
static char *ctl_path;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static int region_of(uint64_t vaddr)
{
	for (int i = 0; i < n_ranges; i++)
		if (vaddr >= ranges[i].low && vaddr < ranges[i].high)
			return i;
	return vaddr >= 0xffff800000000000ULL ? MAX_RANGES : MAX_RANGES + 1;
}

static const char *region_name(int r)
{
	if (r < n_ranges)
		return ranges[r].name;
	return r == MAX_RANGES ? "kernel" : "user";
}

static int is_legacy_prefix(uint8_t b)
{
	switch (b) {
	case 0x26: case 0x2e: case 0x36: case 0x3e: case 0x64: case 0x65:
	case 0x66: case 0x67: case 0xf0: case 0xf2: case 0xf3:
		return 1;
	}
	return 0;
}

/*
 * xor or sub of a general register with itself: how compilers zero a
 * register (and what -fzero-call-used-regs emits at every return).  CPUs
 * recognise the idiom when renaming registers and execute nothing for it,
 * so it is the one class whose count overstates its cost.
 */
static bool is_zero_idiom(const uint8_t *p, size_t n, uint8_t rex)
{
	uint8_t modrm;

	if (n < 2 || (p[0] != 0x31 && p[0] != 0x33 && p[0] != 0x29 && p[0] != 0x2b))
		return false;
	modrm = p[1];
	return (modrm >> 6) == 3 && ((modrm >> 3) & 7) == (modrm & 7) &&
	       ((rex >> 2) & 1) == (rex & 1);	/* REX.R and REX.B: the same register */
}

static enum insn_class classify(const uint8_t *p, size_t n)
{
	size_t i = 0;
	uint8_t rex = 0;

	while (i < n && is_legacy_prefix(p[i]))
		i++;
	if (i < n && (p[i] & 0xf0) == 0x40)	/* REX */
		rex = p[i++];
	if (i >= n)
		return C_OTHER;
	if (p[i] == 0xcf)
		return C_IRET;
	if (is_zero_idiom(p + i, n - i, rex))
		return C_ZERO_IDIOM;
	if (p[i] != 0x0f || i + 1 >= n)
		return C_OTHER;
	uint8_t op = p[i + 1];
	uint8_t modrm = i + 2 < n ? p[i + 2] : 0;
	uint8_t reg = (modrm >> 3) & 7;
	bool has_modrm = i + 2 < n;

	switch (op) {
	case 0x05:
		return C_SYSCALL;
	case 0x07:
		return C_SYSRET;
	case 0x30:
		return C_WRMSR;
	case 0xa2:	/* cpuid */
	case 0x09:	/* wbinvd */
	case 0x08:	/* invd */
		return C_SERIALISING;
	case 0x22:	/* mov to a control register */
		return has_modrm && reg == 3 ? C_CR3 : C_SERIALISING;
	case 0x00:
		return has_modrm && reg == 5 ? C_VERW : C_OTHER;
	case 0x01:
		if (modrm == 0xf8)
			return C_SWAPGS;
		if (has_modrm && (modrm >> 6) != 3 && reg == 7)
			return C_SERIALISING;	/* invlpg */
		return C_OTHER;
	case 0xae:
		if (modrm >= 0xe8 && modrm <= 0xef)
			return C_LFENCE;
		if (modrm >= 0xf0 && modrm <= 0xf7)
			return C_MFENCE;
		return C_OTHER;
	}
	return C_OTHER;
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	size_t n = qemu_plugin_tb_n_insns(tb);

	for (size_t i = 0; i < n; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		int r = region_of(qemu_plugin_insn_vaddr(insn));
		enum insn_class c = classify(qemu_plugin_insn_data(insn),
					     qemu_plugin_insn_size(insn));

		qemu_plugin_register_vcpu_insn_exec_inline(
			insn, QEMU_PLUGIN_INLINE_ADD_U64, &counts[r][c], 1);
	}
}

static void write_snapshot(const char *label)
{
	pthread_mutex_lock(&out_lock);
	fprintf(out, "snap %s\n", label);
	for (int r = 0; r < N_REGIONS; r++) {
		if (r >= n_ranges && r < MAX_RANGES)
			continue;
		for (int c = 0; c < N_CLASSES; c++) {
			/* a plain read of a counter the vCPU adds to: exact
			 * to within the instructions run while it is read */
			uint64_t v = __atomic_load_n(&counts[r][c], __ATOMIC_RELAXED);

			if (v)
				fprintf(out, "%s %s %" PRIu64 "\n", region_name(r),
					class_names[c], v);
		}
	}
	fprintf(out, "end\n");
	fflush(out);
	pthread_mutex_unlock(&out_lock);
}

static void *control_loop(void *arg)
{
	char line[128];

	(void)arg;
	for (;;) {
		FILE *ctl = fopen(ctl_path, "r");	/* blocks until a writer opens it */

		if (!ctl)
			return NULL;
		while (fgets(line, sizeof(line), ctl)) {
			line[strcspn(line, "\r\n")] = 0;
			write_snapshot(line[0] ? line : "unnamed");
		}
		fclose(ctl);
	}
	return NULL;
}

static void plugin_exit(qemu_plugin_id_t id, void *p)
{
	write_snapshot("exit");
	fclose(out);
}

static int read_ranges(const char *path)
{
	FILE *f = fopen(path, "r");
	char name[64];
	uint64_t low, high;

	if (!f) {
		fprintf(stderr, "ukl_cost: %s: %s\n", path, strerror(errno));
		return -1;
	}
	while (n_ranges < MAX_RANGES &&
	       fscanf(f, "%63s %" SCNx64 " %" SCNx64, name, &low, &high) == 3) {
		snprintf(ranges[n_ranges].name, sizeof(ranges[n_ranges].name), "%s", name);
		ranges[n_ranges].low = low;
		ranges[n_ranges].high = high;
		n_ranges++;
	}
	fclose(f);
	return 0;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
					   const qemu_info_t *info,
					   int argc, char **argv)
{
	const char *out_path = NULL;
	pthread_t thread;

	for (int i = 0; i < argc; i++) {
		if (!strncmp(argv[i], "out=", 4))
			out_path = argv[i] + 4;
		else if (!strncmp(argv[i], "ctl=", 4))
			ctl_path = strdup(argv[i] + 4);
		else if (!strncmp(argv[i], "ranges=", 7)) {
			if (read_ranges(argv[i] + 7))
				return -1;
		} else {
			fprintf(stderr, "ukl_cost: unknown argument %s\n", argv[i]);
			return -1;
		}
	}
	if (!out_path) {
		fprintf(stderr, "ukl_cost: out=FILE is required\n");
		return -1;
	}
	out = fopen(out_path, "w");
	if (!out) {
		fprintf(stderr, "ukl_cost: %s: %s\n", out_path, strerror(errno));
		return -1;
	}
	if (ctl_path && pthread_create(&thread, NULL, control_loop, NULL)) {
		fprintf(stderr, "ukl_cost: cannot start the control thread\n");
		return -1;
	}
	qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
	qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
	return 0;
}
