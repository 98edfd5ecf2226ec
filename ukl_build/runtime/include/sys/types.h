/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#include <ukl_runtime.h>
