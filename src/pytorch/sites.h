/* Allocation sites from a PyTorch snapshot's stack frames: one short name per frames
 * list ("model.py:42 forward", "BmmBackward0 (autograd)", "aten::exp"), interned, so
 * that the doctor and the report can say which code holds the blocks. Internal to
 * src/pytorch/. */
#ifndef FL_SITES_H
#define FL_SITES_H

#include "pytorch/pickle.h"

typedef struct fli_sites {
    fli_map by_list;     /* address of a frames list -> its site id (the memo shares lists) */
    fli_map by_name;     /* hash of a name -> site id */
    char **names;       /* names[0] is NULL: site 0 = unknown */
    uint32_t n, cap;
    uint64_t budget;    /* frames still to be looked at; 0: every later list is unknown */
    int nomem;          /* host memory ran out: later sites are unknown */
} fli_sites;

/* frame_budget bounds the frames examined in all (a hostile pickle could list one huge
 * frames list from every entry; each distinct list is examined once). */
void fli_sites_init(fli_sites *s, uint64_t frame_budget);
/* The site of a frames list (a list of {name, filename, line} dicts); 0 when unknown or
 * when frames is not a list. */
uint32_t fli_sites_of(fli_sites *s, const fli_pk *frames);
/* Hands the names over (t->sites, t->n_sites) and empties s. */
void fli_sites_move(fli_sites *s, char ***names, uint32_t *n);
void fli_sites_free(fli_sites *s);

/* Most frames of one list examined: the program's frame is within the first ~60 in real
 * snapshots (the C++ frames of the allocator and the dispatcher come first). */
#define FL_SITES_MAX_FRAMES 256
#define FL_SITES_MAX_NAME 160
#define FL_SITES_MAX 65536

#endif
