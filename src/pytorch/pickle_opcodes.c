/* The opcode table and what the reader says about opcodes: their names, the error
 * messages that cite them, and the refusal of every opcode that would import or call
 * code (by name, with what it would have imported), which is never executed. */
#include "pytorch/pickle_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ERR_MAX 400

static const char *const op_names[256] = {
    ['('] = "MARK", ['.'] = "STOP", ['0'] = "POP", ['1'] = "POP_MARK", ['2'] = "DUP",
    ['F'] = "FLOAT", ['I'] = "INT", ['J'] = "BININT", ['K'] = "BININT1", ['L'] = "LONG",
    ['M'] = "BININT2", ['N'] = "NONE", ['P'] = "PERSID", ['Q'] = "BINPERSID", ['R'] = "REDUCE",
    ['S'] = "STRING", ['T'] = "BINSTRING", ['U'] = "SHORT_BINSTRING", ['V'] = "UNICODE",
    ['X'] = "BINUNICODE", ['a'] = "APPEND", ['b'] = "BUILD", ['c'] = "GLOBAL", ['d'] = "DICT",
    ['}'] = "EMPTY_DICT", ['e'] = "APPENDS", ['g'] = "GET", ['h'] = "BINGET", ['i'] = "INST",
    ['j'] = "LONG_BINGET", ['l'] = "LIST", [']'] = "EMPTY_LIST", ['o'] = "OBJ", ['p'] = "PUT",
    ['q'] = "BINPUT", ['r'] = "LONG_BINPUT", ['s'] = "SETITEM", ['t'] = "TUPLE",
    [')'] = "EMPTY_TUPLE", ['u'] = "SETITEMS", ['G'] = "BINFLOAT", ['B'] = "BINBYTES",
    ['C'] = "SHORT_BINBYTES", [0x80] = "PROTO", [0x81] = "NEWOBJ", [0x82] = "EXT1",
    [0x83] = "EXT2", [0x84] = "EXT4", [0x85] = "TUPLE1", [0x86] = "TUPLE2", [0x87] = "TUPLE3",
    [0x88] = "NEWTRUE", [0x89] = "NEWFALSE", [0x8a] = "LONG1", [0x8b] = "LONG4",
    [0x8c] = "SHORT_BINUNICODE", [0x8d] = "BINUNICODE8", [0x8e] = "BINBYTES8",
    [0x8f] = "EMPTY_SET", [0x90] = "ADDITEMS", [0x91] = "FROZENSET", [0x92] = "NEWOBJ_EX",
    [0x93] = "STACK_GLOBAL", [0x94] = "MEMOIZE", [0x95] = "FRAME", [0x96] = "BYTEARRAY8",
    [0x97] = "NEXT_BUFFER", [0x98] = "READONLY_BUFFER",
};

/* "NAME ('c')" or "NAME (0x93)", for messages. */
static const char *op_label(char *buf, size_t n, uint8_t op)
{
    const char *name = op_names[op] ? op_names[op] : "unknown";
    if (op >= 0x20 && op < 0x7f && op != '\'' && op != '\\')
        snprintf(buf, n, "%s ('%c')", name, op);
    else
        snprintf(buf, n, "%s (0x%02x)", name, op);
    return buf;
}

/* A file that fails on its first byte without PROTO is most likely not a pickle at all
 * (a CSV trace, JSON): say so rather than only what byte 0 would mean as an opcode. */
static const char *not_a_pickle_hint(const pk_reader *r)
{
    return r->at == 0 && r->len && r->p[0] != 0x80 ? " (no PROTO opcode at byte 0: is this a pickle?)" : "";
}

/* Every error of the reader: "NAME: byte AT: OPNAME: problem". Returns -1 so that
 * `return pk_rfail(...)` ends the opcode. */
int pk_rfail(pk_reader *r, const char *fmt, ...)
{
    char msg[ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *name = op_names[r->op] ? op_names[r->op] : "opcode";
    r->err = fli_fail(FL_ERR_PARSE, "%s: byte %zu: %s: %s%s", r->name, r->at, name, msg,
                     not_a_pickle_hint(r));
    return -1;
}

/* Quotes untrusted text for a message: printable ASCII as is, the rest as \xNN, cut. */
const char *pk_quote(char *out, size_t cap, const uint8_t *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (o + 8 >= cap) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        uint8_t c = s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    out[o] = 0;
    return out;
}

/* ---- refused opcodes ------------------------------------------------------------------ */

static void refuse(pk_reader *r, const char *why, const char *detail)
{
    char label[48];
    op_label(label, sizeof label, r->op);
    /* The em dash is UTF-8, like the rest of the messages users read. */
    r->err = fli_fail(FL_ERR_PARSE,
                     "%s: byte %zu: opcode %s %s%s%s%s: refused \xe2\x80\x94 fragless reads only plain data",
                     r->name, r->at, label, why, detail ? " (" : "", detail ? detail : "", detail ? ")" : "");
}

/* GLOBAL and INST name a module and an attribute on two lines: show them. */
static void refuse_import_lines(pk_reader *r)
{
    char detail[160], a[64], b[64];
    const uint8_t *s = r->p + r->pos, *end = r->p + r->len;
    const uint8_t *nl1 = memchr(s, '\n', (size_t)(end - s));
    const uint8_t *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
    if (nl2)
        snprintf(detail, sizeof detail, "%s.%s", pk_quote(a, sizeof a, s, (size_t)(nl1 - s)),
                 pk_quote(b, sizeof b, nl1 + 1, (size_t)(nl2 - nl1 - 1)));
    refuse(r, "would import code", nl2 ? detail : NULL);
}

static void refuse_stack_global(pk_reader *r)
{
    char detail[160], a[64], b[64];
    if (r->sn >= 2 && r->stack[r->sn - 2]->type == FL_PK_STR && r->stack[r->sn - 1]->type == FL_PK_STR) {
        const fli_pk *m = r->stack[r->sn - 2], *n = r->stack[r->sn - 1];
        snprintf(detail, sizeof detail, "%s.%s", pk_quote(a, sizeof a, (const uint8_t *)m->u.s.p, m->u.s.n),
                 pk_quote(b, sizeof b, (const uint8_t *)n->u.s.p, n->u.s.n));
        refuse(r, "would import code", detail);
    } else {
        refuse(r, "would import code", NULL);
    }
}

static void refuse_ext(pk_reader *r, int n)
{
    char detail[64];
    if (r->len - r->pos >= (size_t)n) {
        snprintf(detail, sizeof detail, "extension registry code %llu",
                 (unsigned long long)pk_le(r->p + r->pos, n));
        refuse(r, "would import code", detail);
    } else {
        refuse(r, "would import code", NULL);
    }
}

int pk_run_refused(pk_reader *r)
{
    switch (r->op) {
    case 'c': /* GLOBAL */
    case 'i': /* INST */
        refuse_import_lines(r);
        break;
    case 0x93: /* STACK_GLOBAL */
        refuse_stack_global(r);
        break;
    case 0x82: /* EXT1, EXT2, EXT4: the copyreg extension registry */
    case 0x83:
    case 0x84:
        refuse_ext(r, pk_arg_width(r->op));
        break;
    case 'R': /* REDUCE */
    case 'b': /* BUILD */
    case 'o': /* OBJ */
    case 0x81: /* NEWOBJ */
    case 0x92: /* NEWOBJ_EX */
        refuse(r, "would call code", NULL);
        break;
    case 'P': /* PERSID */
    case 'Q': /* BINPERSID */
        refuse(r, "would call a persistent-id loader", NULL);
        break;
    case 0x97: /* NEXT_BUFFER */
    case 0x98: /* READONLY_BUFFER */
        refuse(r, "needs out-of-band buffers", NULL);
        break;
    case 'S': { /* STRING: protocol 0's quoted Python 2 str, never written for Python 3 data */
        char label[48];
        r->err = fli_fail(FL_ERR_PARSE,
                         "%s: byte %zu: opcode %s is not supported (a protocol 0 quoted string): refused",
                         r->name, r->at, op_label(label, sizeof label, r->op));
        break;
    }
    default:
        r->err = fli_fail(FL_ERR_PARSE,
                         "%s: byte %zu: unknown opcode 0x%02x: refused (not a pickle, or newer than "
                         "protocol 5)", r->name, r->at, r->op);
    }
    return -1;
}
