/* Tables that grow and read as zero where never written: the page tables and handle
 * arrays that warm-up extends page after page. Small ones are ordinary heap memory;
 * from FL_TABLE_MAP_MIN bytes on a table is an anonymous mapping that grows by mremap,
 * so growing copies nothing, the new part is zero without being written, and memory
 * is touched (page-faulted) only where the table is used. */
#ifndef FL_TABLE_H
#define FL_TABLE_H

#include "util/util.h"

/* 128 KiB: a small heap's first index of starts (64 KiB, fragless.c) is heap memory. */
#define FL_TABLE_MAP_MIN (128 * FL_KiB)

/* Grows *p from old_n to new_n elements of elem bytes (new_n > old_n; old_n 0 with *p
 * NULL makes one): the new elements are zero. On failure (FL_ERR_NOMEM, message set)
 * *p is unchanged. */
fl_status fli_table_grow(void **p, size_t elem, uint64_t old_n, uint64_t new_n);
/* Frees a table of n elements of elem bytes (its size says how it was made). */
void fli_table_free(void *p, size_t elem, uint64_t n);

#endif
