/* Allocation sites: a snapshot's frames list (C++ frames of the allocator and the
 * dispatcher, then Python frames, innermost first) summarised as the code a user can
 * change: the innermost Python frame outside torch itself; for blocks allocated by the
 * autograd engine (no Python frame), the autograd node; else the operator. */
#include "pytorch/sites.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fli_sites_init(fli_sites *s, uint64_t frame_budget)
{
    memset(s, 0, sizeof *s);
    s->budget = frame_budget;
    if (fli_map_init(&s->by_list, 64) != FL_OK || fli_map_init(&s->by_name, 64) != FL_OK)
        s->nomem = 1;
}

void fli_sites_free(fli_sites *s)
{
    for (uint32_t i = 1; i < s->n; i++)
        free(s->names[i]);
    free(s->names);
    fli_map_free(&s->by_list);
    fli_map_free(&s->by_name);
    memset(s, 0, sizeof *s);
}

void fli_sites_move(fli_sites *s, char ***names, uint32_t *n)
{
    *names = s->names;
    *n = s->n;
    s->names = NULL;
    s->n = s->cap = 0;
}

static int ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && !memcmp(s + n - k, suffix, k);
}

/* torch's own Python code: its package folder, wherever it is installed. */
static int in_torch(const char *file) { return strstr(file, "/torch/") != NULL || !strncmp(file, "torch/", 6); }

/* The last two components of a path: "pkg/model.py". */
static const char *short_path(const char *file)
{
    const char *last = strrchr(file, '/');
    if (!last)
        return file;
    const char *p = last;
    while (p > file && p[-1] != '/')
        p--;
    return p > file ? p : file;
}

/* The identifier after prefix in name, up to "::" or "(": "BmmBackward0". */
static int ident_after(const char *name, const char *prefix, char *out, size_t cap)
{
    size_t k = strlen(prefix);
    if (strncmp(name, prefix, k))
        return 0;
    size_t n = 0;
    for (const char *p = name + k; *p && *p != ':' && *p != '(' && n + 1 < cap; p++)
        out[n++] = *p;
    out[n] = 0;
    return n > 0;
}

/* Printable ASCII only (names come from the file), cut to fit. */
static void clean(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            *s = '?';
}

static void name_of(fli_sites *s, const fli_pk *frames, char *out, size_t cap)
{
    char autograd[64] = "", op[64] = "", torch_py[FL_SITES_MAX_NAME] = "";
    out[0] = 0;
    size_t n = fli_pk_len(frames);
    if (n > FL_SITES_MAX_FRAMES)
        n = FL_SITES_MAX_FRAMES;
    for (size_t i = 0; i < n; i++) {
        if (!s->budget)
            break;
        s->budget--;
        const fli_pk *f = fli_pk_item(frames, i);
        const fli_pk *fn = fli_pk_dict_get(f, "filename"), *nm = fli_pk_dict_get(f, "name"),
                    *ln = fli_pk_dict_get(f, "line");
        if (!fn || !nm || fn->type != FL_PK_STR || nm->type != FL_PK_STR)
            continue;
        long long line = ln && ln->type == FL_PK_INT ? (long long)ln->u.i : 0;
        if (ends_with(fn->u.s.p, fn->u.s.n, ".py")) {
            if (!in_torch(fn->u.s.p)) {
                snprintf(out, cap, "%.80s:%lld %.60s", short_path(fn->u.s.p), line, nm->u.s.p);
                clean(out);
                return;
            }
            if (!torch_py[0] && !strstr(fn->u.s.p, "/cuda/memory.py"))
                snprintf(torch_py, sizeof torch_py, "%.80s:%lld %.60s", short_path(fn->u.s.p), line, nm->u.s.p);
            continue;
        }
        if (!autograd[0] && ident_after(nm->u.s.p, "torch::autograd::generated::", autograd, 48))
            strcat(autograd, " (autograd)");
        if (!op[0] && ident_after(nm->u.s.p, "at::_ops::", op + 6, sizeof op - 6))
            memcpy(op, "aten::", 6);
    }
    snprintf(out, cap, "%s", autograd[0] ? autograd : torch_py[0] ? torch_py : op);
    clean(out);
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * UINT64_C(1099511628211);
    return h == UINT64_MAX ? 0 : h; /* UINT64_MAX is the map's empty key */
}

uint32_t fli_sites_of(fli_sites *s, const fli_pk *frames)
{
    if (!frames || frames->type != FL_PK_LIST || !frames->u.seq.n || s->nomem)
        return 0;
    uint64_t key = (uint64_t)(uintptr_t)frames, v;
    if (fli_map_get(&s->by_list, key, &v))
        return (uint32_t)v;
    char name[FL_SITES_MAX_NAME];
    name_of(s, frames, name, sizeof name);
    uint32_t id = 0;
    if (name[0]) {
        uint64_t h = hash_str(name);
        if (fli_map_get(&s->by_name, h, &v) && !strcmp(s->names[v], name)) {
            id = (uint32_t)v;
        } else if (s->n < FL_SITES_MAX) {
            if (s->n == s->cap) {
                uint32_t cap = s->cap ? 2 * s->cap : 64;
                char **nv = realloc(s->names, cap * sizeof *nv);
                if (!nv) {
                    s->nomem = 1;
                    return 0;
                }
                s->names = nv;
                s->cap = cap;
                if (!s->n)
                    s->names[s->n++] = NULL;
            }
            char *copy = strdup(name);
            if (!copy || fli_map_put(&s->by_name, h, s->n) != FL_OK) {
                free(copy);
                s->nomem = 1;
                return 0;
            }
            s->names[s->n] = copy;
            id = s->n++;
        }
    }
    if (fli_map_put(&s->by_list, key, id) != FL_OK)
        s->nomem = 1;
    return id;
}
