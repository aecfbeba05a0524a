/* The cca policies following a recorded PyTorch run (replay of a snapshot under the
 * allocator it was taken with): the segments the real allocator held before recording
 * began are rebuilt as they were (seed), and the segments it gave back are given back
 * where it did (release), so that the emulation starts and continues from its state. */
#include "policy/cca_internal.h"

#include <stdlib.h>
#include <string.h>

/* Block extents: a known size is kept; an unknown one is the request rounded by our
 * rules, plus, in the large pool, a remainder the split rule would not have split off
 * (at most 1 MiB before the next block or the end), or the whole segment when it is at
 * least max_split_size (such segments are never split). */
static fl_status extents(const cca_policy *c, const fli_seed_segment *sg, const fli_seed_block *bl, uint64_t *size)
{
    if (!sg->size || sg->size % CCA_MIN_BLOCK)
        return fli_fail(FL_ERR_INVALID, "seed: segment of %llu bytes", (unsigned long long)sg->size);
    for (size_t i = 0; i < sg->n_blocks; i++) {
        uint64_t off = bl[i].offset, next = i + 1 < sg->n_blocks ? bl[i + 1].offset : sg->size;
        if (off % CCA_MIN_BLOCK || next <= off || next > sg->size)
            return fli_fail(FL_ERR_INVALID, "seed: block %zu at offset %llu does not fit", i,
                           (unsigned long long)off);
        uint64_t z = bl[i].size ? bl[i].size : fli_round_request(&c->cfg, bl[i].requested);
        if (!bl[i].size && !sg->small && z <= next - off) {
            if (sg->size >= c->max_split)
                z = next - off;
            else if (next - off - z <= CCA_SMALL_SIZE)
                z = next - off;
        }
        if (!z || z % CCA_MIN_BLOCK || z > next - off)
            return fli_fail(FL_ERR_INVALID, "seed: block %zu (%llu bytes at offset %llu) does not fit", i,
                           (unsigned long long)z, (unsigned long long)off);
        size[i] = z;
    }
    return FL_OK;
}

static cca_block *piece(cca_policy *c, cca_segment *s, cca_block **prev, uint64_t addr, uint64_t size)
{
    cca_block *b = cca_block_new(c);
    b->node.stream = s->stream;
    b->node.addr = addr;
    b->node.size = size;
    b->seg = s;
    b->mapped = true;
    b->prev = *prev;
    if (*prev)
        (*prev)->next = b;
    else
        s->head = b;
    *prev = b;
    return b;
}

/* Undoes a half-built segment: nothing of it stays. */
static void unbuild(cca_policy *c, cca_segment *s)
{
    for (cca_block *b = s->head, *nx; b; b = nx) {
        nx = b->next;
        if (b->allocated) {
            fli_map_remove(&c->live, b->node.addr, NULL);
            c->base.allocated -= b->node.size;
            c->base.num_allocs--;
        } else {
            cca_set_remove(&s->pool->blocks, &b->node);
        }
        cca_block_delete(c, b);
    }
    cca_segment_unlink(c, s);
    fli_dev_mem_free(c->base.dev, s->base);
    free(s);
}

fl_status cca_seed(fli_policy *p, const fli_seed_segment *sg, const fli_seed_block *bl, uint64_t *addrs)
{
    cca_policy *c = (cca_policy *)p;
    if (c->expandable)
        return fli_fail(FL_ERR_UNSUPPORTED, "seed: expandable segments are not rebuilt");
    size_t n = sg->n_blocks;
    uint64_t *size = malloc((n ? n : 1) * sizeof *size);
    if (!size)
        return fli_fail(FL_ERR_NOMEM, "seed: host memory");
    fl_status st = extents(c, sg, bl, size);
    if (st == FL_OK)
        st = cca_spare(c, 2 * n + 2);
    cca_segment *s = NULL;
    if (st == FL_OK && !(s = calloc(1, sizeof *s)))
        st = fli_fail(FL_ERR_NOMEM, "seed: host memory");
    uint64_t base = 0;
    if (st == FL_OK && (st = fli_dev_mem_alloc(c->base.dev, sg->size, &base)) != FL_OK) {
        free(s);
        s = NULL;
    }
    if (st != FL_OK) {
        free(size);
        return st;
    }
    s->pool = sg->small ? &c->small : &c->large;
    s->stream = sg->stream;
    s->base = base;
    s->size = sg->size;
    cca_segment_link(c, s);
    cca_block *prev = NULL;
    uint64_t at = 0;
    for (size_t i = 0; i <= n && st == FL_OK; i++) {
        uint64_t off = i < n ? bl[i].offset : sg->size;
        if (off > at)
            cca_pool_insert(piece(c, s, &prev, base + at, off - at));
        if (i == n)
            break;
        cca_block *b = piece(c, s, &prev, base + off, size[i]);
        b->allocated = true;
        b->requested = bl[i].requested;
        if ((st = fli_map_put(&c->live, b->node.addr, (uint64_t)(uintptr_t)b)) != FL_OK) {
            if (b->prev) /* neither live nor in the pool: taken off before unbuild */
                b->prev->next = NULL;
            else
                s->head = NULL;
            cca_block_delete(c, b);
            break;
        }
        c->base.allocated += b->node.size;
        c->base.num_allocs++;
        addrs[i] = b->node.addr;
        at = off + size[i];
    }
    free(size);
    if (st != FL_OK)
        unbuild(c, s);
    return st;
}

fl_status cca_release(fli_policy *p, uint64_t size, uint64_t stream, uint64_t *freed)
{
    cca_policy *c = (cca_policy *)p;
    *freed = 0;
    if (c->expandable) {
        /* PyTorch unmaps every page free blocks cover (empty_cache, the OOM retry): the
         * first unmap of such a burst does it all. */
        uint64_t before = cca_reserved(c);
        fl_status st = cca_spare(c, 4);
        if (st == FL_OK)
            st = fli_dev_synchronize(c->base.dev);
        for (int i = 0; i < 2 && st == FL_OK; i++)
            st = cca_exp_release_pool(c, i ? &c->small : &c->large);
        *freed = before - cca_reserved(c);
        return st;
    }
    cca_pool *pools[2] = {&c->large, &c->small};
    for (int i = 0; i < 2; i++)
        for (cca_node *n = cca_set_lower_bound(&pools[i]->blocks, stream, size, 0);
             n && n->stream == stream && n->size == size; n = cca_set_next(&pools[i]->blocks, n)) {
            cca_block *b = (cca_block *)n;
            if (!cca_unsplit(b))
                continue;
            fl_status st = cca_release_block(c, b);
            if (st == FL_OK)
                *freed = size;
            return st;
        }
    return FL_OK;
}
