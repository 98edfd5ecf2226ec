/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/* mmap()/munmap() come from nolibc; PROT_* and MAP_* from <asm/mman.h>. */
#include <ukl_runtime.h>
