/* Zero-filled growing tables (table.h): heap memory below FL_TABLE_MAP_MIN bytes,
 * anonymous mappings grown by mremap from there on. */
#include "util/table.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t map_size(size_t bytes)
{
    static size_t page;
    if (!page)
        page = (size_t)sysconf(_SC_PAGESIZE);
    return (bytes + page - 1) & ~(page - 1);
}

static int mapped(size_t bytes) { return bytes >= FL_TABLE_MAP_MIN; }

#define FL_TABLE_LINE 64

/* Heap memory for a table of `bytes`, on a cache line of its own (whole lines: the small
 * tables of two heaps that two threads change at once, stream-local operations, never
 * share one). malloc with room to align by hand, the pointer malloc gave kept in the
 * word before the table: glibc's aligned_alloc splits and frees the chunk's ends, which
 * warm-up (a dozen tables made per fresh allocator) paid on every table. */
static void *line_alloc(size_t bytes)
{
    size_t lines = (bytes + FL_TABLE_LINE - 1) / FL_TABLE_LINE * FL_TABLE_LINE;
    char *raw = malloc(lines + FL_TABLE_LINE);
    if (!raw)
        return NULL;
    char *q = (char *)(((uintptr_t)raw + sizeof(void *) + FL_TABLE_LINE - 1) & ~(uintptr_t)(FL_TABLE_LINE - 1));
    memcpy(q - sizeof(void *), &raw, sizeof raw);
    return q;
}

static void line_free(void *q)
{
    if (!q)
        return;
    void *raw;
    memcpy(&raw, (char *)q - sizeof(void *), sizeof raw);
    free(raw);
}

fl_status fli_table_grow(void **p, size_t elem, uint64_t old_n, uint64_t new_n)
{
    FL_ASSERT(new_n > old_n && (old_n == 0 || *p));
    if (new_n > SIZE_MAX / elem)
        return fli_fail(FL_ERR_NOMEM, "table of %llu entries of %zu bytes: too large", (unsigned long long)new_n, elem);
    size_t old_b = (size_t)old_n * elem, new_b = (size_t)new_n * elem;
    void *q;
    if (!mapped(new_b)) {
        q = line_alloc(new_b);
        if (!q)
            return fli_fail(FL_ERR_NOMEM, "table of %zu bytes: out of host memory", new_b);
        if (old_b)
            memcpy(q, *p, old_b);
        memset((char *)q + old_b, 0, new_b - old_b);
        line_free(*p);
    } else if (old_b && mapped(old_b)) {
#ifdef MREMAP_MAYMOVE
        q = mremap(*p, map_size(old_b), map_size(new_b), MREMAP_MAYMOVE);
#else
        q = mmap(NULL, map_size(new_b), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q != MAP_FAILED) {
            memcpy(q, *p, old_b);
            munmap(*p, map_size(old_b));
        }
#endif
        if (q == MAP_FAILED)
            return fli_fail(FL_ERR_NOMEM, "table of %zu bytes: cannot map it", new_b);
    } else {
        q = mmap(NULL, map_size(new_b), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q == MAP_FAILED)
            return fli_fail(FL_ERR_NOMEM, "table of %zu bytes: cannot map it", new_b);
        if (old_b)
            memcpy(q, *p, old_b);
        line_free(*p);
    }
    *p = q;
    return FL_OK;
}

void fli_table_free(void *p, size_t elem, uint64_t n)
{
    size_t b = (size_t)n * elem;
    if (p && mapped(b))
        munmap(p, map_size(b));
    else
        line_free(p);
}
