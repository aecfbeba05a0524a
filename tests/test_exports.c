/* libfragless.so exports exactly the functions include/fragless.h and
 * include/fragless_torch.h declare, each marked FL_API: no internal symbol leaks (it would
 * bind to, or shadow, a program's own), none of the interface is missing, and every entry
 * point the Python package looks up by name (python/fragless) is among them. The
 * exports are listed with nm -D; without nm the test is skipped. */
#include <ctype.h>
#include <dirent.h>
#include <string.h>
#include <sys/wait.h>

#include "test_support.h"

#ifndef FL_NM
#define FL_NM "nm"
#endif

/* A sorted set of names. */
typedef struct names {
    char **v;
    size_t n, cap;
} names;

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int names_has(const names *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->v[i], name))
            return 1;
    return 0;
}

static void names_add(names *s, const char *name, size_t len)
{
    char *copy = malloc(len + 1);
    if (!copy)
        exit(1);
    memcpy(copy, name, len);
    copy[len] = 0;
    if (names_has(s, copy)) {
        free(copy);
        return;
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v)
            exit(1);
    }
    s->v[s->n++] = copy;
    qsort(s->v, s->n, sizeof *s->v, cmp_name);
}

static void names_free(names *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    *s = (names){0};
}

static int is_ident(int c) { return isalnum(c) || c == '_'; }

/* ---------------------------------------------------------------------------------
 * The headers: C declarations, read well enough for a public header
 * --------------------------------------------------------------------------------- */

/* text without comments and preprocessor lines (continuations included); string
 * literals are kept. The caller frees it. */
static char *strip(const char *text)
{
    size_t n = strlen(text), o = 0;
    char *out = malloc(n + 1);
    if (!out)
        exit(1);
    int line_start = 1;
    for (size_t i = 0; i < n;) {
        if (line_start) {
            size_t j = i;
            while (j < n && (text[j] == ' ' || text[j] == '\t'))
                j++;
            if (j < n && text[j] == '#') { /* to the end of the line, and its continuations */
                while (j < n && text[j] != '\n')
                    j += text[j] == '\\' && j + 1 < n ? 2 : 1;
                i = j;
                continue;
            }
        }
        line_start = 0;
        if (text[i] == '/' && i + 1 < n && text[i + 1] == '*') {
            const char *end = strstr(text + i + 2, "*/");
            i = end ? (size_t)(end - text) + 2 : n;
            out[o++] = ' ';
        } else if (text[i] == '/' && i + 1 < n && text[i + 1] == '/') {
            while (i < n && text[i] != '\n')
                i++;
        } else if (text[i] == '"') {
            out[o++] = text[i++];
            while (i < n && text[i] != '"') {
                if (text[i] == '\\' && i + 1 < n)
                    out[o++] = text[i++];
                out[o++] = text[i++];
            }
            if (i < n)
                out[o++] = text[i++];
        } else {
            line_start = text[i] == '\n';
            out[o++] = text[i++];
        }
    }
    out[o] = 0;
    return out;
}

/* Whether the statement s[0..n) has the identifier word as a token. */
static int has_token(const char *s, size_t n, const char *word)
{
    size_t w = strlen(word);
    for (size_t i = 0; i + w <= n; i++)
        if (!strncmp(s + i, word, w) && (i == 0 || !is_ident((unsigned char)s[i - 1])) &&
            (i + w == n || !is_ident((unsigned char)s[i + w])))
            return 1;
    return 0;
}

/* One top-level statement s[0..n): a function's declaration (or definition) adds its
 * name to funcs, and to unmarked when it lacks FL_API. Typedefs (function pointer types
 * included), struct, enum and variable declarations are no functions; static ones are
 * not exported. */
static void statement(const char *s, size_t n, names *funcs, names *unmarked)
{
    while (n && isspace((unsigned char)*s))
        s++, n--;
    const char *paren = memchr(s, '(', n);
    if (!paren || has_token(s, n, "typedef") || has_token(s, (size_t)(paren - s), "static"))
        return;
    const char *brace = memchr(s, '{', n);
    if (brace && brace < paren) /* a struct or enum whose members are function pointers */
        return;
    const char *end = paren;
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    const char *start = end;
    while (start > s && is_ident((unsigned char)start[-1]))
        start--;
    if (start == end)
        return; /* "(*name)(...)": a function pointer variable, no function */
    names_add(funcs, start, (size_t)(end - start));
    if (!has_token(s, (size_t)(paren - s), "FL_API"))
        names_add(unmarked, start, (size_t)(end - start));
}

/* The functions a header's text declares, into funcs (and unmarked, see statement). */
static void declared_functions(const char *text, names *funcs, names *unmarked)
{
    char *s = strip(text);
    size_t begin = 0;
    int depth = 0, extern_c = 0;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        if (c == '"') { /* only in extern "C" */
            while (s[i + 1] && s[i + 1] != '"')
                i++;
            if (s[i + 1])
                i++;
        } else if (c == '{') {
            const char *st = s + begin;
            while (isspace((unsigned char)*st))
                st++;
            if (depth == 0 && !strncmp(st, "extern \"C\"", 10)) { /* a linkage block, no scope */
                extern_c++;
                begin = i + 1;
            } else {
                depth++;
            }
        } else if (c == '}') {
            if (depth == 0 && extern_c) {
                extern_c--;
                begin = i + 1;
            } else if (depth > 0 && --depth == 0) {
                /* a function's body ends its statement; a struct's is followed by ';' */
                const char *st = s + begin, *brace = strchr(st, '{');
                const char *close = brace;
                while (close > st && isspace((unsigned char)close[-1]))
                    close--;
                if (close > st && close[-1] == ')') {
                    statement(st, (size_t)(brace - st), funcs, unmarked);
                    begin = i + 1;
                }
            }
        } else if (c == ';' && depth == 0) {
            statement(s + begin, i - begin, funcs, unmarked);
            begin = i + 1;
        }
    }
    free(s);
}

/* ---------------------------------------------------------------------------------
 * The library: nm -D --defined-only
 * --------------------------------------------------------------------------------- */

/* The dynamic symbols a shared object defines, from nm's output ("ADDR TYPE NAME" lines).
 * Absolute symbols (version nodes) and the linker's own are not the library's. */
static void exported_symbols(FILE *nm_output, names *out)
{
    static const char *const linker[] = {"_init", "_fini", "_edata", "_end", "__bss_start"};
    char line[1024];
    while (fgets(line, sizeof line, nm_output)) {
        char type, name[512];
        if (sscanf(line, "%*s %c %511s", &type, name) != 2 || type == 'A')
            continue;
        name[strcspn(name, "@")] = 0; /* name@@VERSION */
        int ours = 1;
        for (size_t i = 0; i < sizeof linker / sizeof *linker; i++)
            ours &= strcmp(name, linker[i]) != 0;
        if (ours)
            names_add(out, name, strlen(name));
    }
}

/* Prints what differs between the declared and the exported names (when report is not
 * NULL) and returns how many names differ. */
static int compare(const names *declared, const names *exported, const char *so, FILE *report)
{
    int extra = 0, missing = 0;
    for (size_t i = 0; i < exported->n; i++) {
        if (names_has(declared, exported->v[i]))
            continue;
        extra++;
        if (report)
            fprintf(report, "test_exports: %s exports %s, which no public header declares\n", so, exported->v[i]);
    }
    for (size_t i = 0; i < declared->n; i++) {
        if (names_has(exported, declared->v[i]))
            continue;
        missing++;
        if (report)
            fprintf(report, "test_exports: %s does not export %s, declared in a public header\n", so,
                    declared->v[i]);
    }
    if ((extra || missing) && report)
        fprintf(report, "test_exports: %d extra, %d missing (of %zu declared, %zu exported)\n", extra, missing,
                declared->n, exported->n);
    return extra + missing;
}

/* ---------------------------------------------------------------------------------
 * The tests
 * --------------------------------------------------------------------------------- */

/* The reader and the comparison on known text: they find what they must, so the test
 * below can fail. */
static void test_reader(void)
{
    static const char header[] =
        "/* fl_in_comment(void); */\n"
        "#ifndef H\n#define H\n#define FL_MACRO(x) \\\n    fl_in_macro(x)\n"
        "#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
        "typedef int (*fl_walker)(int a, void *user);\n"
        "typedef struct fl_s { int (*fn)(int); uint64_t x; } fl_s;\n"
        "typedef enum fl_e { FL_A = 0, FL_B } fl_e;\n"
        "struct fl_fwd;\n"
        "FL_API const char *const *fl_names(void); // fl_in_line_comment(int);\n"
        "FL_API fl_status fl_two_lines(int a,\n    int b);\n"
        "void fl_unmarked(void);\n"
        "static inline int fl_inline(int x) { return x + 1; }\n"
        "FL_API void *fragless_torch_x(ssize_t size, int device, void *stream);\n"
        "#ifdef __cplusplus\n}\n#endif\n#endif\n";
    names funcs = {0}, unmarked = {0}, nm = {0};
    declared_functions(header, &funcs, &unmarked);
    CHECK_EQ_U64(funcs.n, 4);
    CHECK(names_has(&funcs, "fl_names") && names_has(&funcs, "fl_two_lines") && names_has(&funcs, "fl_unmarked") &&
          names_has(&funcs, "fragless_torch_x"));
    CHECK(unmarked.n == 1 && names_has(&unmarked, "fl_unmarked"));

    static const char listing[] = "0000000000001000 T fl_names\n"
                                  "0000000000001010 T fl_two_lines@@FL_1.0\n"
                                  "0000000000001020 T fl_unmarked\n"
                                  "0000000000002000 D fl_internal_table\n"
                                  "0000000000000000 A FL_1.0\n"
                                  "0000000000003000 B _end\n";
    FILE *f = fmemopen((void *)listing, sizeof listing - 1, "r");
    CHECK(f != NULL);
    if (f) {
        exported_symbols(f, &nm);
        fclose(f);
    }
    CHECK_EQ_U64(nm.n, 4);
    /* fl_internal_table is extra, fragless_torch_x missing */
    CHECK_EQ_U64(compare(&funcs, &nm, "listing", NULL), 2);
    CHECK_EQ_U64(compare(&nm, &nm, "listing", NULL), 0);
    names_free(&funcs);
    names_free(&unmarked);
    names_free(&nm);
}

/* Adds the fragless_torch_* names a Python source file uses. */
static void python_lookups(const char *path, names *out)
{
    char *text = fl_test_read_file(path);
    CHECK(text != NULL);
    if (!text)
        return;
    for (const char *p = text; (p = strstr(p, "fragless_torch_")) != NULL;) {
        size_t n = 0;
        while (is_ident((unsigned char)p[n]))
            n++;
        if (p == text || !is_ident((unsigned char)p[-1]))
            names_add(out, p, n);
        p += n;
    }
    free(text);
}

static void test_library(void)
{
    static const char *const headers[] = {FL_SOURCE_DIR "/include/fragless.h",
                                          FL_SOURCE_DIR "/include/fragless_torch.h"};
    names declared = {0}, unmarked = {0}, exported = {0}, python = {0};
    for (size_t i = 0; i < sizeof headers / sizeof *headers; i++) {
        char *text = fl_test_read_file(headers[i]);
        if (!text) {
            fprintf(stderr, "test_exports: cannot read %s\n", headers[i]);
            CHECK(text != NULL);
            continue;
        }
        size_t before = declared.n;
        declared_functions(text, &declared, &unmarked);
        printf("%s: %zu functions\n", headers[i], declared.n - before);
        CHECK(declared.n > before);
        free(text);
    }
    for (size_t i = 0; i < unmarked.n; i++)
        fprintf(stderr, "test_exports: %s is declared without FL_API\n", unmarked.v[i]);
    CHECK_EQ_U64(unmarked.n, 0);

    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' -D --defined-only '%s'", FL_NM, FRAGLESS_SO);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p)
        fl_test_skip("cannot run nm (popen failed)");
    exported_symbols(p, &exported);
    int st = pclose(p);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
        fl_test_skip(FL_NM " not found: libfragless.so's exports not checked");
    if (st != 0) {
        fprintf(stderr, "test_exports: %s failed (status %d)\n", cmd, st);
        CHECK(st == 0);
    }
    printf("%s: %zu exported\n", FRAGLESS_SO, exported.n);
    CHECK(exported.n > 0);
    CHECK_EQ_U64(compare(&declared, &exported, FRAGLESS_SO, stderr), 0);

    /* The Python package finds its entry points by name (ctypes, CUDAPluggableAllocator). */
    static const char pydir[] = FL_SOURCE_DIR "/python/fragless";
    DIR *d = opendir(pydir);
    CHECK(d != NULL);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        size_t len = strlen(e->d_name);
        if (len > 3 && !strcmp(e->d_name + len - 3, ".py")) {
            char path[sizeof pydir + 256];
            snprintf(path, sizeof path, "%s/%s", pydir, e->d_name);
            python_lookups(path, &python);
        }
    }
    if (d)
        closedir(d);
    CHECK(names_has(&python, "fragless_torch_malloc") && names_has(&python, "fragless_torch_free"));
    for (size_t i = 0; i < python.n; i++)
        if (!names_has(&exported, python.v[i])) {
            fprintf(stderr, "test_exports: python/fragless uses %s, which %s does not export\n", python.v[i],
                    FRAGLESS_SO);
            CHECK(names_has(&exported, python.v[i]));
        }
    names_free(&declared);
    names_free(&unmarked);
    names_free(&exported);
    names_free(&python);
}

int main(void)
{
    test_reader();
    test_library();
    return fl_test_done("test_exports");
}
