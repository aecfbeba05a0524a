/* The restricted pickle reader: every accepted opcode of protocols 0-5 against known
 * answers, every code-running opcode refused by name and byte, malformed input (truncated
 * at every byte, thousands of corrupted variants) failing cleanly, and the memory bound. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_support.h"
#include "pytorch/pickle.h"

/* ---- known answers -------------------------------------------------------------------
 * Made with python3's pickle.dumps(VALUE, protocol=N) (the h_* ones by hand, checked with
 * pickletools.dis), each with the canonical dump below: None, True, False, ints in
 * decimal, big(HEX) for ints beyond 64 bits (the little-endian bytes of LONG1/LONG4),
 * floats as %.17g, s"..." for str and b"..." for bytes (printable ASCII but " and \ as
 * is, other bytes \xNN of the UTF-8), [..] for lists, sets and frozensets, (..) for
 * tuples, {k: v} for dicts, "..." below depth 40 (cycles). */

/* protocol 2: {'none': None, 't': True, 'f': False, 'i1': 7, 'i2': 300, 'i4': -5, 'i4b': 70000,
 * 'l1': 1099511627776, 'l1n': -1099511627776, 'i64max': 9223372036854775807, 'i64min':
 * -9223372036854775808, 'big': 1180591620717411303429, 'bign': -1180591620717411303429, 'fl': 1.5,
 * 'fl2': -0.1, 'str': 'héllo € 😀', 'empty': '', 'tup0': (), 'tup1': (1,), 'tup2': (1, 2), 'tup3':
 * (1, 2, 3), 'tup4': (1, 2, 3, 4), 'list1': [9], 'list': [1, 'a', None], 'shared': [[1, 2], [1,
 * 2]], 'nested': {'a': {'b': [[]]}}}
 * opcodes: APPEND APPENDS BINFLOAT BINGET BININT BININT1 BININT2 BINPUT BINUNICODE EMPTY_DICT
 *     EMPTY_LIST EMPTY_TUPLE LONG1 MARK NEWFALSE NEWTRUE NONE PROTO SETITEM SETITEMS STOP TUPLE
 *     TUPLE1 TUPLE2 TUPLE3 */
static const uint8_t p2_values[] = {
    0x80, 0x02, 0x7d, 0x71, 0x00, 0x28, 0x58, 0x04, 0x00, 0x00, 0x00, 0x6e, 0x6f, 0x6e, 0x65, 0x71,
    0x01, 0x4e, 0x58, 0x01, 0x00, 0x00, 0x00, 0x74, 0x71, 0x02, 0x88, 0x58, 0x01, 0x00, 0x00, 0x00,
    0x66, 0x71, 0x03, 0x89, 0x58, 0x02, 0x00, 0x00, 0x00, 0x69, 0x31, 0x71, 0x04, 0x4b, 0x07, 0x58,
    0x02, 0x00, 0x00, 0x00, 0x69, 0x32, 0x71, 0x05, 0x4d, 0x2c, 0x01, 0x58, 0x02, 0x00, 0x00, 0x00,
    0x69, 0x34, 0x71, 0x06, 0x4a, 0xfb, 0xff, 0xff, 0xff, 0x58, 0x03, 0x00, 0x00, 0x00, 0x69, 0x34,
    0x62, 0x71, 0x07, 0x4a, 0x70, 0x11, 0x01, 0x00, 0x58, 0x02, 0x00, 0x00, 0x00, 0x6c, 0x31, 0x71,
    0x08, 0x8a, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x58, 0x03, 0x00, 0x00, 0x00, 0x6c, 0x31,
    0x6e, 0x71, 0x09, 0x8a, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x58, 0x06, 0x00, 0x00, 0x00,
    0x69, 0x36, 0x34, 0x6d, 0x61, 0x78, 0x71, 0x0a, 0x8a, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0x7f, 0x58, 0x06, 0x00, 0x00, 0x00, 0x69, 0x36, 0x34, 0x6d, 0x69, 0x6e, 0x71, 0x0b, 0x8a,
    0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x58, 0x03, 0x00, 0x00, 0x00, 0x62, 0x69,
    0x67, 0x71, 0x0c, 0x8a, 0x09, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x58, 0x04,
    0x00, 0x00, 0x00, 0x62, 0x69, 0x67, 0x6e, 0x71, 0x0d, 0x8a, 0x09, 0xfb, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xbf, 0x58, 0x02, 0x00, 0x00, 0x00, 0x66, 0x6c, 0x71, 0x0e, 0x47, 0x3f, 0xf8,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x58, 0x03, 0x00, 0x00, 0x00, 0x66, 0x6c, 0x32, 0x71, 0x0f,
    0x47, 0xbf, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a, 0x58, 0x03, 0x00, 0x00, 0x00, 0x73, 0x74,
    0x72, 0x71, 0x10, 0x58, 0x0f, 0x00, 0x00, 0x00, 0x68, 0xc3, 0xa9, 0x6c, 0x6c, 0x6f, 0x20, 0xe2,
    0x82, 0xac, 0x20, 0xf0, 0x9f, 0x98, 0x80, 0x71, 0x11, 0x58, 0x05, 0x00, 0x00, 0x00, 0x65, 0x6d,
    0x70, 0x74, 0x79, 0x71, 0x12, 0x58, 0x00, 0x00, 0x00, 0x00, 0x71, 0x13, 0x58, 0x04, 0x00, 0x00,
    0x00, 0x74, 0x75, 0x70, 0x30, 0x71, 0x14, 0x29, 0x58, 0x04, 0x00, 0x00, 0x00, 0x74, 0x75, 0x70,
    0x31, 0x71, 0x15, 0x4b, 0x01, 0x85, 0x71, 0x16, 0x58, 0x04, 0x00, 0x00, 0x00, 0x74, 0x75, 0x70,
    0x32, 0x71, 0x17, 0x4b, 0x01, 0x4b, 0x02, 0x86, 0x71, 0x18, 0x58, 0x04, 0x00, 0x00, 0x00, 0x74,
    0x75, 0x70, 0x33, 0x71, 0x19, 0x4b, 0x01, 0x4b, 0x02, 0x4b, 0x03, 0x87, 0x71, 0x1a, 0x58, 0x04,
    0x00, 0x00, 0x00, 0x74, 0x75, 0x70, 0x34, 0x71, 0x1b, 0x28, 0x4b, 0x01, 0x4b, 0x02, 0x4b, 0x03,
    0x4b, 0x04, 0x74, 0x71, 0x1c, 0x58, 0x05, 0x00, 0x00, 0x00, 0x6c, 0x69, 0x73, 0x74, 0x31, 0x71,
    0x1d, 0x5d, 0x71, 0x1e, 0x4b, 0x09, 0x61, 0x58, 0x04, 0x00, 0x00, 0x00, 0x6c, 0x69, 0x73, 0x74,
    0x71, 0x1f, 0x5d, 0x71, 0x20, 0x28, 0x4b, 0x01, 0x58, 0x01, 0x00, 0x00, 0x00, 0x61, 0x71, 0x21,
    0x4e, 0x65, 0x58, 0x06, 0x00, 0x00, 0x00, 0x73, 0x68, 0x61, 0x72, 0x65, 0x64, 0x71, 0x22, 0x5d,
    0x71, 0x23, 0x28, 0x5d, 0x71, 0x24, 0x28, 0x4b, 0x01, 0x4b, 0x02, 0x65, 0x68, 0x24, 0x65, 0x58,
    0x06, 0x00, 0x00, 0x00, 0x6e, 0x65, 0x73, 0x74, 0x65, 0x64, 0x71, 0x25, 0x7d, 0x71, 0x26, 0x68,
    0x21, 0x7d, 0x71, 0x27, 0x58, 0x01, 0x00, 0x00, 0x00, 0x62, 0x71, 0x28, 0x5d, 0x71, 0x29, 0x5d,
    0x71, 0x2a, 0x61, 0x73, 0x73, 0x75, 0x2e,
};
static const char p2_values_dump[] =
    "{s\"none\": None, s\"t\": True, s\"f\": False, s\"i1\": 7, s\"i2\": 300, s\"i4\": -5, s\"i4b\": 70"
    "000, s\"l1\": 1099511627776, s\"l1n\": -1099511627776, s\"i64max\": 9223372036854775807, s\"i64min"
    "\": -9223372036854775808, s\"big\": big(050000000000000040), s\"bign\": big(fbffffffffffffffbf), s"
    "\"fl\": 1.5, s\"fl2\": -0.10000000000000001, s\"str\": s\"h\\xc3\\xa9llo \\xe2\\x82\\xac \\xf0\\x9"
    "f\\x98\\x80\", s\"empty\": s\"\", s\"tup0\": (), s\"tup1\": (1), s\"tup2\": (1, 2), s\"tup3\": (1,"
    " 2, 3), s\"tup4\": (1, 2, 3, 4), s\"list1\": [9], s\"list\": [1, s\"a\", None], s\"shared\": [[1, "
    "2], [1, 2]], s\"nested\": {s\"a\": {s\"b\": [[]]}}}";

/* protocol 3: {"b0": b"", "b1": b"\x00\xffab", "b256": bytes(range(256)), "x": [b"q"]}
 * opcodes: APPEND BINBYTES BINPUT BINUNICODE EMPTY_DICT EMPTY_LIST MARK PROTO SETITEMS
 *     SHORT_BINBYTES STOP */
static const uint8_t p3_bytes[] = {
    0x80, 0x03, 0x7d, 0x71, 0x00, 0x28, 0x58, 0x02, 0x00, 0x00, 0x00, 0x62, 0x30, 0x71, 0x01, 0x43,
    0x00, 0x71, 0x02, 0x58, 0x02, 0x00, 0x00, 0x00, 0x62, 0x31, 0x71, 0x03, 0x43, 0x04, 0x00, 0xff,
    0x61, 0x62, 0x71, 0x04, 0x58, 0x04, 0x00, 0x00, 0x00, 0x62, 0x32, 0x35, 0x36, 0x71, 0x05, 0x42,
    0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
    0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b,
    0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b,
    0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b,
    0x3c, 0x3d, 0x3e, 0x3f, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b,
    0x4c, 0x4d, 0x4e, 0x4f, 0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b,
    0x5c, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b,
    0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x7b,
    0x7c, 0x7d, 0x7e, 0x7f, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b,
    0x8c, 0x8d, 0x8e, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b,
    0x9c, 0x9d, 0x9e, 0x9f, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab,
    0xac, 0xad, 0xae, 0xaf, 0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb,
    0xbc, 0xbd, 0xbe, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb,
    0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb,
    0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb,
    0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb,
    0xfc, 0xfd, 0xfe, 0xff, 0x71, 0x06, 0x58, 0x01, 0x00, 0x00, 0x00, 0x78, 0x71, 0x07, 0x5d, 0x71,
    0x08, 0x43, 0x01, 0x71, 0x71, 0x09, 0x61, 0x75, 0x2e,
};
static const char p3_bytes_dump[] =
    "{s\"b0\": b\"\", s\"b1\": b\"\\x00\\xffab\", s\"b256\": b\"\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x0"
    "7\\x08\\x09\\x0a\\x0b\\x0c\\x0d\\x0e\\x0f\\x10\\x11\\x12\\x13\\x14\\x15\\x16\\x17\\x18\\x19\\x1a\\"
    "x1b\\x1c\\x1d\\x1e\\x1f !\\x22#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\x5c]^_`ab"
    "cdefghijklmnopqrstuvwxyz{|}~\\x7f\\x80\\x81\\x82\\x83\\x84\\x85\\x86\\x87\\x88\\x89\\x8a\\x8b\\x8c"
    "\\x8d\\x8e\\x8f\\x90\\x91\\x92\\x93\\x94\\x95\\x96\\x97\\x98\\x99\\x9a\\x9b\\x9c\\x9d\\x9e\\x9f\\x"
    "a0\\xa1\\xa2\\xa3\\xa4\\xa5\\xa6\\xa7\\xa8\\xa9\\xaa\\xab\\xac\\xad\\xae\\xaf\\xb0\\xb1\\xb2\\xb3"
    "\\xb4\\xb5\\xb6\\xb7\\xb8\\xb9\\xba\\xbb\\xbc\\xbd\\xbe\\xbf\\xc0\\xc1\\xc2\\xc3\\xc4\\xc5\\xc6\\x"
    "c7\\xc8\\xc9\\xca\\xcb\\xcc\\xcd\\xce\\xcf\\xd0\\xd1\\xd2\\xd3\\xd4\\xd5\\xd6\\xd7\\xd8\\xd9\\xda"
    "\\xdb\\xdc\\xdd\\xde\\xdf\\xe0\\xe1\\xe2\\xe3\\xe4\\xe5\\xe6\\xe7\\xe8\\xe9\\xea\\xeb\\xec\\xed\\x"
    "ee\\xef\\xf0\\xf1\\xf2\\xf3\\xf4\\xf5\\xf6\\xf7\\xf8\\xf9\\xfa\\xfb\\xfc\\xfd\\xfe\\xff\", s\"x\":"
    " [b\"q\"]}";

/* protocol 4 (FRAME, MEMOIZE, SHORT_BINUNICODE, sets): {'set': {1, 2, 3}, 'fs': frozenset({4, 5}),
 * 'es': set()}, 'long': 'x'*10, shared lists, a 3-entry trace
 * opcodes: ADDITEMS APPENDS BINGET BININT1 BININT2 EMPTY_DICT EMPTY_LIST EMPTY_SET FRAME FROZENSET
 *     LONG1 MARK MEMOIZE PROTO SETITEMS SHORT_BINUNICODE STOP */
static const uint8_t p4_values[] = {
    0x80, 0x04, 0x95, 0xaf, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7d, 0x94, 0x28, 0x8c, 0x03,
    0x73, 0x65, 0x74, 0x94, 0x8f, 0x94, 0x28, 0x4b, 0x01, 0x4b, 0x02, 0x4b, 0x03, 0x90, 0x8c, 0x02,
    0x66, 0x73, 0x94, 0x28, 0x4b, 0x04, 0x4b, 0x05, 0x91, 0x94, 0x8c, 0x02, 0x65, 0x73, 0x94, 0x8f,
    0x94, 0x8c, 0x04, 0x6c, 0x6f, 0x6e, 0x67, 0x94, 0x8c, 0x0a, 0x78, 0x78, 0x78, 0x78, 0x78, 0x78,
    0x78, 0x78, 0x78, 0x78, 0x94, 0x8c, 0x06, 0x73, 0x68, 0x61, 0x72, 0x65, 0x64, 0x94, 0x5d, 0x94,
    0x28, 0x5d, 0x94, 0x28, 0x4b, 0x01, 0x4b, 0x02, 0x65, 0x68, 0x0b, 0x65, 0x8c, 0x05, 0x74, 0x72,
    0x61, 0x63, 0x65, 0x94, 0x5d, 0x94, 0x28, 0x7d, 0x94, 0x28, 0x8c, 0x06, 0x61, 0x63, 0x74, 0x69,
    0x6f, 0x6e, 0x94, 0x8c, 0x05, 0x61, 0x6c, 0x6c, 0x6f, 0x63, 0x94, 0x8c, 0x04, 0x61, 0x64, 0x64,
    0x72, 0x94, 0x8a, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7f, 0x8c, 0x04, 0x73, 0x69, 0x7a, 0x65,
    0x94, 0x4d, 0x00, 0x02, 0x8c, 0x06, 0x73, 0x74, 0x72, 0x65, 0x61, 0x6d, 0x94, 0x4b, 0x00, 0x8c,
    0x07, 0x74, 0x69, 0x6d, 0x65, 0x5f, 0x75, 0x73, 0x94, 0x8a, 0x07, 0x65, 0xae, 0x43, 0xa1, 0x6c,
    0x56, 0x06, 0x75, 0x68, 0x0e, 0x68, 0x0e, 0x65, 0x75, 0x2e,
};
static const char p4_values_dump[] =
    "{s\"set\": [1, 2, 3], s\"fs\": [4, 5], s\"es\": [], s\"long\": s\"xxxxxxxxxx\", s\"shared\": [[1, "
    "2], [1, 2]], s\"trace\": [{s\"action\": s\"alloc\", s\"addr\": 139637976727552, s\"size\": 512, s"
    "\"stream\": 0, s\"time_us\": 1783874422287973}, {s\"action\": s\"alloc\", s\"addr\": 1396379767275"
    "52, s\"size\": 512, s\"stream\": 0, s\"time_us\": 1783874422287973}, {s\"action\": s\"alloc\", s\""
    "addr\": 139637976727552, s\"size\": 512, s\"stream\": 0, s\"time_us\": 1783874422287973}]}";

/* protocol 5: {'ba': bytearray(b'abc'), 'b': b'xyz', 't': (True, None)}
 * opcodes: BYTEARRAY8 EMPTY_DICT FRAME MARK MEMOIZE NEWTRUE NONE PROTO SETITEMS SHORT_BINBYTES
 *     SHORT_BINUNICODE STOP TUPLE2 */
static const uint8_t p5_values[] = {
    0x80, 0x05, 0x95, 0x29, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7d, 0x94, 0x28, 0x8c, 0x02,
    0x62, 0x61, 0x94, 0x96, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x61, 0x62, 0x63, 0x94,
    0x8c, 0x01, 0x62, 0x94, 0x43, 0x03, 0x78, 0x79, 0x7a, 0x94, 0x8c, 0x01, 0x74, 0x94, 0x88, 0x4e,
    0x86, 0x94, 0x75, 0x2e,
};
static const char p5_values_dump[] =
    "{s\"ba\": b\"abc\", s\"b\": b\"xyz\", s\"t\": (True, None)}";

/* protocol 0 (text opcodes): {'a': [1, 1180591620717411303424, -3, 2.5, 'xé\\u\n😀', True, False,
 * None, -9223372036854775808], 'b': (1, 2), 'c': {}, 's1': ['shared'], 's2': ['shared']}
 * opcodes: APPEND DICT FLOAT GET INT LIST LONG MARK NONE PUT SETITEM STOP TUPLE UNICODE */
static const uint8_t p0_text[] = {
    0x28, 0x64, 0x70, 0x30, 0x0a, 0x56, 0x61, 0x0a, 0x70, 0x31, 0x0a, 0x28, 0x6c, 0x70, 0x32, 0x0a,
    0x49, 0x31, 0x0a, 0x61, 0x4c, 0x31, 0x31, 0x38, 0x30, 0x35, 0x39, 0x31, 0x36, 0x32, 0x30, 0x37,
    0x31, 0x37, 0x34, 0x31, 0x31, 0x33, 0x30, 0x33, 0x34, 0x32, 0x34, 0x4c, 0x0a, 0x61, 0x49, 0x2d,
    0x33, 0x0a, 0x61, 0x46, 0x32, 0x2e, 0x35, 0x0a, 0x61, 0x56, 0x78, 0xe9, 0x5c, 0x75, 0x30, 0x30,
    0x35, 0x63, 0x75, 0x5c, 0x75, 0x30, 0x30, 0x30, 0x61, 0x5c, 0x55, 0x30, 0x30, 0x30, 0x31, 0x66,
    0x36, 0x30, 0x30, 0x0a, 0x70, 0x33, 0x0a, 0x61, 0x49, 0x30, 0x31, 0x0a, 0x61, 0x49, 0x30, 0x30,
    0x0a, 0x61, 0x4e, 0x61, 0x4c, 0x2d, 0x39, 0x32, 0x32, 0x33, 0x33, 0x37, 0x32, 0x30, 0x33, 0x36,
    0x38, 0x35, 0x34, 0x37, 0x37, 0x35, 0x38, 0x30, 0x38, 0x4c, 0x0a, 0x61, 0x73, 0x56, 0x62, 0x0a,
    0x70, 0x34, 0x0a, 0x28, 0x49, 0x31, 0x0a, 0x49, 0x32, 0x0a, 0x74, 0x70, 0x35, 0x0a, 0x73, 0x56,
    0x63, 0x0a, 0x70, 0x36, 0x0a, 0x28, 0x64, 0x70, 0x37, 0x0a, 0x73, 0x56, 0x73, 0x31, 0x0a, 0x70,
    0x38, 0x0a, 0x28, 0x6c, 0x70, 0x39, 0x0a, 0x56, 0x73, 0x68, 0x61, 0x72, 0x65, 0x64, 0x0a, 0x70,
    0x31, 0x30, 0x0a, 0x61, 0x73, 0x56, 0x73, 0x32, 0x0a, 0x70, 0x31, 0x31, 0x0a, 0x67, 0x39, 0x0a,
    0x73, 0x2e,
};
static const char p0_text_dump[] =
    "{s\"a\": [1, big(000000000000000040), -3, 2.5, s\"x\\xc3\\xa9\\x5cu\\x0a\\xf0\\x9f\\x98\\x80\", Tr"
    "ue, False, None, -9223372036854775808], s\"b\": (1, 2), s\"c\": {}, s\"s1\": [s\"shared\"], s\"s2"
    "\": [s\"shared\"]}";

/* protocol 1: {'a': [1, 300, 70000, 1099511627776, 1.25, 'str', (), (1,)], 'b': [1,
 * 1180591620717411303424, -3, 2.5, 'xé\\u\n😀', True, False, None, -9223372036854775808]}
 * opcodes: APPENDS BINFLOAT BININT BININT1 BININT2 BINPUT BINUNICODE EMPTY_DICT EMPTY_LIST
 *     EMPTY_TUPLE INT LONG MARK NONE SETITEMS STOP TUPLE */
static const uint8_t p1_values[] = {
    0x7d, 0x71, 0x00, 0x28, 0x58, 0x01, 0x00, 0x00, 0x00, 0x61, 0x71, 0x01, 0x5d, 0x71, 0x02, 0x28,
    0x4b, 0x01, 0x4d, 0x2c, 0x01, 0x4a, 0x70, 0x11, 0x01, 0x00, 0x4c, 0x31, 0x30, 0x39, 0x39, 0x35,
    0x31, 0x31, 0x36, 0x32, 0x37, 0x37, 0x37, 0x36, 0x4c, 0x0a, 0x47, 0x3f, 0xf4, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x58, 0x03, 0x00, 0x00, 0x00, 0x73, 0x74, 0x72, 0x71, 0x03, 0x29, 0x28, 0x4b,
    0x01, 0x74, 0x71, 0x04, 0x65, 0x58, 0x01, 0x00, 0x00, 0x00, 0x62, 0x71, 0x05, 0x5d, 0x71, 0x06,
    0x28, 0x4b, 0x01, 0x4c, 0x31, 0x31, 0x38, 0x30, 0x35, 0x39, 0x31, 0x36, 0x32, 0x30, 0x37, 0x31,
    0x37, 0x34, 0x31, 0x31, 0x33, 0x30, 0x33, 0x34, 0x32, 0x34, 0x4c, 0x0a, 0x4a, 0xfd, 0xff, 0xff,
    0xff, 0x47, 0x40, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x58, 0x0a, 0x00, 0x00, 0x00, 0x78,
    0xc3, 0xa9, 0x5c, 0x75, 0x0a, 0xf0, 0x9f, 0x98, 0x80, 0x71, 0x07, 0x49, 0x30, 0x31, 0x0a, 0x49,
    0x30, 0x30, 0x0a, 0x4e, 0x4c, 0x2d, 0x39, 0x32, 0x32, 0x33, 0x33, 0x37, 0x32, 0x30, 0x33, 0x36,
    0x38, 0x35, 0x34, 0x37, 0x37, 0x35, 0x38, 0x30, 0x38, 0x4c, 0x0a, 0x65, 0x75, 0x2e,
};
static const char p1_values_dump[] =
    "{s\"a\": [1, 300, 70000, 1099511627776, 1.25, s\"str\", (), (1)], s\"b\": [1, big(0000000000000000"
    "40), -3, 2.5, s\"x\\xc3\\xa9\\x5cu\\x0a\\xf0\\x9f\\x98\\x80\", True, False, None, -922337203685477"
    "5808]}";

/* protocol 0: l=[]; t=(l,); l.append(t); l3=[]; t3=(l3,1,2,3); l3.append(t3); [t, t3]
 * opcodes: APPEND GET INT LIST MARK POP PUT STOP TUPLE */
static const uint8_t rec_p0[] = {
    0x28, 0x6c, 0x70, 0x30, 0x0a, 0x28, 0x28, 0x6c, 0x70, 0x31, 0x0a, 0x28, 0x67, 0x31, 0x0a, 0x74,
    0x70, 0x32, 0x0a, 0x61, 0x30, 0x30, 0x67, 0x32, 0x0a, 0x61, 0x28, 0x28, 0x6c, 0x70, 0x33, 0x0a,
    0x28, 0x67, 0x33, 0x0a, 0x49, 0x31, 0x0a, 0x49, 0x32, 0x0a, 0x49, 0x33, 0x0a, 0x74, 0x70, 0x34,
    0x0a, 0x61, 0x49, 0x31, 0x0a, 0x49, 0x32, 0x0a, 0x49, 0x33, 0x0a, 0x30, 0x30, 0x30, 0x30, 0x30,
    0x67, 0x34, 0x0a, 0x61, 0x2e,
};
static const char rec_p0_dump[] =
    "[([([([([([([([([([([([([([([([([([([([([...])])])])])])])])])])])])])])])])])])])]), ([([([([([(["
    "([([([([([([([([([([([([([([...], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)]"
    ", 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)"
    "], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)]";

/* protocol 1: l=[]; t=(l,); l.append(t); l3=[]; t3=(l3,1,2,3); l3.append(t3); [t, t3]
 * opcodes: APPEND APPENDS BINGET BININT1 BINPUT EMPTY_LIST MARK POP_MARK STOP TUPLE */
static const uint8_t rec_p1[] = {
    0x5d, 0x71, 0x00, 0x28, 0x28, 0x5d, 0x71, 0x01, 0x28, 0x68, 0x01, 0x74, 0x71, 0x02, 0x61, 0x31,
    0x68, 0x02, 0x28, 0x5d, 0x71, 0x03, 0x28, 0x68, 0x03, 0x4b, 0x01, 0x4b, 0x02, 0x4b, 0x03, 0x74,
    0x71, 0x04, 0x61, 0x4b, 0x01, 0x4b, 0x02, 0x4b, 0x03, 0x31, 0x68, 0x04, 0x65, 0x2e,
};
static const char rec_p1_dump[] =
    "[([([([([([([([([([([([([([([([([([([([([...])])])])])])])])])])])])])])])])])])])]), ([([([([([(["
    "([([([([([([([([([([([([([([...], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)]"
    ", 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)"
    "], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)]";

/* protocol 2: l=[]; t=(l,); l.append(t); l3=[]; t3=(l3,1,2,3); l3.append(t3); [t, t3]
 * opcodes: APPEND APPENDS BINGET BININT1 BINPUT EMPTY_LIST MARK POP POP_MARK PROTO STOP TUPLE
 *     TUPLE1 */
static const uint8_t rec_p2[] = {
    0x80, 0x02, 0x5d, 0x71, 0x00, 0x28, 0x5d, 0x71, 0x01, 0x68, 0x01, 0x85, 0x71, 0x02, 0x61, 0x30,
    0x68, 0x02, 0x28, 0x5d, 0x71, 0x03, 0x28, 0x68, 0x03, 0x4b, 0x01, 0x4b, 0x02, 0x4b, 0x03, 0x74,
    0x71, 0x04, 0x61, 0x4b, 0x01, 0x4b, 0x02, 0x4b, 0x03, 0x31, 0x68, 0x04, 0x65, 0x2e,
};
static const char rec_p2_dump[] =
    "[([([([([([([([([([([([([([([([([([([([([...])])])])])])])])])])])])])])])])])])])]), ([([([([([(["
    "([([([([([([([([([([([([([([...], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)]"
    ", 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)"
    "], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)], 1, 2, 3)]";

/* protocol 2: [2**2041 + 1, 2**64, -2**63 - 1, -2**70] (LONG4; LONG1 beyond 64 bits)
 * opcodes: APPENDS BINPUT EMPTY_LIST LONG1 LONG4 MARK PROTO STOP */
static const uint8_t p2_long4[] = {
    0x80, 0x02, 0x5d, 0x71, 0x00, 0x28, 0x8b, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x8a, 0x09, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x8a, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    0xff, 0x8a, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x65, 0x2e,
};
static const char p2_long4_dump[] =
    "[big(010000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000002), big(000000000000000001), big(ffffffffffffff7fff), big(00000000000000"
    "00c0)]";

/* hand-built: K 5, DUP, TUPLE2: (5, 5)
 * opcodes: BININT1 DUP PROTO STOP TUPLE2 */
static const uint8_t h_dup[] = {
    0x80, 0x02, 0x4b, 0x05, 0x32, 0x86, 0x2e,
};
static const char h_dup_dump[] =
    "(5, 5)";

/* hand-built: BINUNICODE8: "abc"
 * opcodes: BINUNICODE8 PROTO STOP */
static const uint8_t h_unicode8[] = {
    0x80, 0x04, 0x8d, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x61, 0x62, 0x63, 0x2e,
};
static const char h_unicode8_dump[] =
    "s\"abc\"";

/* hand-built: BINBYTES8: b"hi"
 * opcodes: BINBYTES8 PROTO STOP */
static const uint8_t h_bytes8[] = {
    0x80, 0x04, 0x8e, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x68, 0x69, 0x2e,
};
static const char h_bytes8_dump[] =
    "b\"hi\"";

/* hand-built: Python 2 strs: SHORT_BINSTRING "ok", BINSTRING "abc" in a TUPLE
 * opcodes: BINSTRING MARK PROTO SHORT_BINSTRING STOP TUPLE */
static const uint8_t h_py2str[] = {
    0x80, 0x02, 0x28, 0x55, 0x02, 0x6f, 0x6b, 0x54, 0x03, 0x00, 0x00, 0x00, 0x61, 0x62, 0x63, 0x74,
    0x2e,
};
static const char h_py2str_dump[] =
    "(s\"ok\", s\"abc\")";

/* hand-built: INT 42, INT -7, LONG 123L, LONG -9, INT True/False, FLOAT, UNICODE escapes, in a
 * LIST
 * opcodes: FLOAT INT LIST LONG MARK STOP UNICODE */
static const uint8_t h_text[] = {
    0x28, 0x49, 0x34, 0x32, 0x0a, 0x49, 0x2d, 0x37, 0x0a, 0x4c, 0x31, 0x32, 0x33, 0x4c, 0x0a, 0x4c,
    0x2d, 0x39, 0x0a, 0x49, 0x30, 0x31, 0x0a, 0x49, 0x30, 0x30, 0x0a, 0x46, 0x2d, 0x32, 0x2e, 0x35,
    0x0a, 0x56, 0x61, 0x5c, 0x75, 0x30, 0x30, 0x65, 0x39, 0x5c, 0x55, 0x30, 0x30, 0x30, 0x31, 0x66,
    0x36, 0x30, 0x30, 0x5c, 0x5c, 0x75, 0x0a, 0x6c, 0x2e,
};
static const char h_text_dump[] =
    "[42, -7, 123, -9, True, False, -2.5, s\"a\\xc3\\xa9\\xf0\\x9f\\x98\\x80\\x5c\\x5cu\"]";

/* hand-built: L = [] (MEMOIZE 0); APPENDS 1 (MEMOIZE 1, PUT 7), BINGET 0 (L itself), GET 7,
 * LONG_BINPUT 256 / LONG_BINGET 256; NONE POP; MARK NONE POP_MARK; MARK POP (pops the MARK);
 * EMPTY_SET ADDITEMS {1}, APPEND; FROZENSET {2, 3}, APPEND: L == [1, L, 1, 1, {1}, frozenset({2,
 * 3})]
 * opcodes: ADDITEMS APPEND APPENDS BINGET BININT1 EMPTY_LIST EMPTY_SET FROZENSET GET LONG_BINGET
 *     LONG_BINPUT MARK MEMOIZE NONE POP POP_MARK PROTO PUT STOP */
static const uint8_t h_memo[] = {
    0x80, 0x04, 0x5d, 0x94, 0x28, 0x4b, 0x01, 0x94, 0x70, 0x37, 0x0a, 0x68, 0x00, 0x67, 0x37, 0x0a,
    0x72, 0x00, 0x01, 0x00, 0x00, 0x6a, 0x00, 0x01, 0x00, 0x00, 0x65, 0x4e, 0x30, 0x28, 0x4e, 0x31,
    0x28, 0x30, 0x8f, 0x28, 0x4b, 0x01, 0x90, 0x61, 0x28, 0x4b, 0x02, 0x4b, 0x03, 0x91, 0x61, 0x2e,
};
static const char h_memo_dump[] =
    "[1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1"
    ", [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [1, [..., ..., ..., ..., ..., ...], 1, 1"
    ", [...], [..., ...]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3"
    "]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2,"
    " 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], ["
    "2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1],"
    " [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1"
    "], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, "
    "[1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1"
    ", [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1, 1, [1], [2, 3]], 1,"
    " 1, [1], [2, 3]]";

typedef struct known {
    const char *name;
    const uint8_t *data;
    size_t len;
    const char *dump;
} known;

#define KNOWN(x) {#x, x, sizeof x, x##_dump}
static const known knowns[] = {
    KNOWN(p2_values), KNOWN(p3_bytes), KNOWN(p4_values), KNOWN(p5_values), KNOWN(p0_text),
    KNOWN(p1_values), KNOWN(rec_p0),   KNOWN(rec_p1),    KNOWN(rec_p2),    KNOWN(p2_long4),
    KNOWN(h_dup),     KNOWN(h_unicode8), KNOWN(h_bytes8), KNOWN(h_py2str), KNOWN(h_text),
    KNOWN(h_memo),
};
#define N_KNOWN (sizeof knowns / sizeof knowns[0])

/* A growable string for dumps. */
typedef struct sbuf {
    char *s;
    size_t n, cap;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        if (!b->s)
            abort();
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

static void put_escaped(sbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char tmp[8];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            put(b, (const char *)&c, 1);
        else
            put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "\\x%02x", c));
    }
}

/* Recursive, but only to depth 41: the test's own bound, matching gen's. */
static void dump(sbuf *b, const fli_pk *o, int depth)
{
    char tmp[64];
    if (depth > 40) {
        puts_(b, "...");
        return;
    }
    switch (o->type) {
    case FL_PK_NONE:
        puts_(b, "None");
        break;
    case FL_PK_BOOL:
        puts_(b, o->u.i ? "True" : "False");
        break;
    case FL_PK_INT:
        snprintf(tmp, sizeof tmp, "%lld", (long long)o->u.i);
        puts_(b, tmp);
        break;
    case FL_PK_BIGINT:
        puts_(b, "big(");
        for (size_t i = 0; i < o->u.s.n; i++) {
            snprintf(tmp, sizeof tmp, "%02x", (unsigned char)o->u.s.p[i]);
            puts_(b, tmp);
        }
        puts_(b, ")");
        break;
    case FL_PK_FLOAT:
        snprintf(tmp, sizeof tmp, "%.17g", o->u.f);
        puts_(b, tmp);
        break;
    case FL_PK_STR:
    case FL_PK_BYTES:
        puts_(b, o->type == FL_PK_STR ? "s\"" : "b\"");
        put_escaped(b, o->u.s.p, o->u.s.n);
        puts_(b, "\"");
        break;
    case FL_PK_LIST:
    case FL_PK_TUPLE:
        puts_(b, o->type == FL_PK_LIST ? "[" : "(");
        for (size_t i = 0; i < fli_pk_len(o); i++) {
            if (i)
                puts_(b, ", ");
            dump(b, fli_pk_item(o, i), depth + 1);
        }
        puts_(b, o->type == FL_PK_LIST ? "]" : ")");
        break;
    case FL_PK_DICT:
        puts_(b, "{");
        for (size_t i = 0; i < fli_pk_len(o); i++) {
            if (i)
                puts_(b, ", ");
            dump(b, fli_pk_key(o, i), depth + 1);
            puts_(b, ": ");
            dump(b, fli_pk_value(o, i), depth + 1);
        }
        puts_(b, "}");
        break;
    default:
        puts_(b, "?");
    }
}

static void test_known_answers(void)
{
    for (size_t k = 0; k < N_KNOWN; k++) {
        const known *c = &knowns[k];
        fli_pk_doc *doc = NULL;
        fl_status s = fli_pickle_load_memory(c->data, c->len, c->name, 0, &doc);
        CHECK_OK(s);
        if (s != FL_OK)
            continue;
        sbuf b = {0};
        dump(&b, fli_pk_doc_root(doc), 0);
        int same = b.s && strcmp(b.s, c->dump) == 0;
        CHECK(same);
        if (!same)
            fprintf(stderr, "%s:\n  got  %s\n  want %s\n", c->name, b.s ? b.s : "", c->dump);
        free(b.s);
        fli_pickle_free(doc);
    }
}

/* The structure itself, beyond the dump: sharing through the memo, cycles, protocol. */
static void test_structure(void)
{
    fli_pk_doc *doc;
    CHECK_OK(fli_pickle_load_memory(h_memo, sizeof h_memo, "h_memo", 0, &doc));
    const fli_pk *l = fli_pk_doc_root(doc);
    CHECK(l->type == FL_PK_LIST && fli_pk_len(l) == 6);
    CHECK(fli_pk_item(l, 1) == l); /* BINGET 0 is the list itself */
    CHECK(fli_pk_item(l, 0) == fli_pk_item(l, 2)); /* GET 7 is the object PUT 7 stored */
    CHECK_EQ_U64(fli_pk_doc_protocol(doc), 4);
    fli_pickle_free(doc);

    CHECK_OK(fli_pickle_load_memory(p2_values, sizeof p2_values, "p2", 0, &doc));
    const fli_pk *d = fli_pk_doc_root(doc);
    const fli_pk *sh = fli_pk_dict_get(d, "shared");
    CHECK(sh && fli_pk_len(sh) == 2 && fli_pk_item(sh, 0) == fli_pk_item(sh, 1));
    CHECK(fli_pk_dict_get(d, "absent") == NULL);
    CHECK(fli_pk_dict_get(fli_pk_dict_get(d, "list"), "x") == NULL); /* not a dict */
    CHECK_EQ_U64(fli_pk_doc_protocol(doc), 2);
    CHECK(fli_pk_doc_bytes(doc) > 0 && fli_pk_doc_bytes(doc) < 64 * 1024);
    CHECK(!strcmp(fli_pk_doc_name(doc), "p2"));
    fli_pickle_free(doc);

    /* No PROTO: protocol 0. */
    CHECK_OK(fli_pickle_load_memory(h_text, sizeof h_text, "h_text", 0, &doc));
    CHECK_EQ_U64(fli_pk_doc_protocol(doc), 0);
    fli_pickle_free(doc);
}

/* ---- lookups --------------------------------------------------------------------------- */

static int msg_has(const char *needle)
{
    const char *m = fl_last_error();
    int ok = strstr(m, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  message '%s' lacks '%s'\n", m, needle);
    return ok;
}

static void test_lookups(void)
{
    fli_pk_doc *doc;
    CHECK_OK(fli_pickle_load_memory(p2_values, sizeof p2_values, "p2", 0, &doc));
    const fli_pk *d = fli_pk_doc_root(doc), *v;
    int64_t i = 0;
    uint64_t u = 0;
    double f = 0;
    int b = -1;
    const char *s = NULL;
    size_t n = 0;
    CHECK_OK(fli_pk_want_int(d, "i4", &i, "%s: here", "p"));
    CHECK(i == -5);
    CHECK_OK(fli_pk_want_int(d, "i64min", &i, "x"));
    CHECK(i == INT64_MIN);
    CHECK_OK(fli_pk_want_uint(d, "l1", &u, "x"));
    CHECK_EQ_U64(u, UINT64_C(1) << 40);
    CHECK_OK(fli_pk_want_float(d, "fl", &f, "x"));
    CHECK(f == 1.5);
    CHECK_OK(fli_pk_want_float(d, "i1", &f, "x")); /* an int is a float too */
    CHECK(f == 7.0);
    CHECK_OK(fli_pk_want_bool(d, "t", &b, "x"));
    CHECK(b == 1);
    CHECK_OK(fli_pk_want_str(d, "str", &s, &n, "x"));
    CHECK(n == strlen(s) && !strncmp(s, "h\xc3\xa9llo", 6));
    CHECK(fli_pk_str_is(fli_pk_dict_get(d, "empty"), ""));
    CHECK_OK(fli_pk_want(d, "tup2", FL_PK_TUPLE, &v, "x"));
    CHECK(fli_pk_len(v) == 2);

    CHECK_STATUS(fli_pk_want_int(d, "str", &i, "%s: device_traces[%d][%d]", "snap.pickle", 0, 17), FL_ERR_PARSE);
    CHECK(msg_has("snap.pickle: device_traces[0][17]: 'str' is a str, expected an int"));
    CHECK_STATUS(fli_pk_want_uint(d, "i4", &u, "w"), FL_ERR_PARSE);
    CHECK(msg_has("w: 'i4' is -5, expected an int >= 0"));
    CHECK_STATUS(fli_pk_want_int(d, "big", &i, "w"), FL_ERR_PARSE);
    CHECK(msg_has("'big' is an int over 64 bits, expected an int"));
    CHECK_STATUS(fli_pk_want_int(d, "nokey", &i, "w"), FL_ERR_PARSE);
    CHECK(msg_has("w: no key 'nokey'"));
    CHECK_STATUS(fli_pk_want_bool(d, "i1", &b, "w"), FL_ERR_PARSE);
    CHECK(msg_has("'i1' is an int, expected a bool"));
    CHECK_STATUS(fli_pk_want_str(d, "none", &s, NULL, "w"), FL_ERR_PARSE);
    CHECK(msg_has("'none' is None, expected a str"));
    CHECK_STATUS(fli_pk_want(d, "list", FL_PK_DICT, &v, "w"), FL_ERR_PARSE);
    CHECK(msg_has("'list' is a list, expected a dict"));
    CHECK_STATUS(fli_pk_want_int(fli_pk_dict_get(d, "list"), "k", &i, "%s[%d]", "seg", 3), FL_ERR_PARSE);
    CHECK(msg_has("seg[3]: is a list, expected a dict"));
    CHECK_STATUS(fli_pk_check(fli_pk_dict_get(d, "str"), FL_PK_LIST, "w"), FL_ERR_PARSE);
    CHECK(msg_has("w: is a str, expected a list"));
    CHECK_OK(fli_pk_check(d, FL_PK_DICT, "w"));

    /* Optional: absent or None leave the value alone; a wrong type is still an error. */
    i = 99;
    CHECK_OK(fli_pk_opt_int(d, "nokey", &i, "w"));
    CHECK_OK(fli_pk_opt_int(d, "none", &i, "w"));
    CHECK(i == 99);
    CHECK_OK(fli_pk_opt_int(d, "i2", &i, "w"));
    CHECK(i == 300);
    CHECK_STATUS(fli_pk_opt_uint(d, "fl", &u, "w"), FL_ERR_PARSE);
    CHECK(msg_has("'fl' is a float, expected an int >= 0"));
    v = d;
    CHECK_OK(fli_pk_opt(d, "nokey", FL_PK_LIST, &v, "w"));
    CHECK(v == NULL);
    CHECK_OK(fli_pk_opt_float(d, "fl2", &f, "w"));
    CHECK(f == -0.1);
    CHECK_OK(fli_pk_opt_bool(d, "f", &b, "w"));
    CHECK(b == 0);
    s = NULL;
    CHECK_OK(fli_pk_opt_str(d, "nokey", &s, NULL, "w"));
    CHECK(s == NULL);
    CHECK_OK(fli_pk_opt_uint(d, "i2", &u, "w"));
    CHECK_EQ_U64(u, 300);
    fli_pickle_free(doc);
}

/* ---- refused and malformed ------------------------------------------------------------- */

typedef struct bad {
    const char *bytes;
    size_t len;
    const char *needles[3]; /* substrings the message must hold */
} bad;

#define B(lit) lit, sizeof lit - 1

/* Each opcode that imports or calls code, at a known byte. */
static const bad refused[] = {
    /* pickle.dumps(collections.OrderedDict, protocol=2): GLOBAL at byte 2 */
    {B("\x80\x02" "ccollections\nOrderedDict\nq\x00."),
     {"byte 2: opcode GLOBAL ('c') would import code (collections.OrderedDict)", "refused", "plain data"}},
    /* pickle.dumps(collections.OrderedDict, protocol=4): STACK_GLOBAL at byte 39 */
    {B("\x80\x04\x95\x1f\x00\x00\x00\x00\x00\x00\x00"
       "\x8c\x0b" "collections\x94\x8c\x0bOrderedDict\x94\x93\x94."),
     {"byte 39: opcode STACK_GLOBAL (0x93) would import code (collections.OrderedDict)", "refused", NULL}},
    {B("\x80\x02N)R."), {"byte 4: opcode REDUCE ('R') would call code", NULL, NULL}},
    {B("\x80\x02}}b."), {"byte 4: opcode BUILD ('b') would call code", NULL, NULL}},
    {B("(ios\nsystem\nS'true'\n."), {"byte 1: opcode INST ('i') would import code (os.system)", NULL, NULL}},
    {B("(N)o."), {"byte 3: opcode OBJ ('o') would call code", NULL, NULL}},
    {B("\x80\x02N)\x81."), {"byte 4: opcode NEWOBJ (0x81) would call code", NULL, NULL}},
    {B("\x80\x04N)}\x92."), {"byte 5: opcode NEWOBJ_EX (0x92) would call code", NULL, NULL}},
    {B("Pfoo\n."), {"byte 0: opcode PERSID ('P') would call a persistent-id loader", NULL, NULL}},
    {B("\x80\x02NQ."), {"byte 3: opcode BINPERSID ('Q') would call a persistent-id loader", NULL, NULL}},
    {B("\x80\x02\x82\x07."), {"byte 2: opcode EXT1 (0x82) would import code (extension registry code 7)"}},
    {B("\x80\x02\x83\x01\x02."), {"byte 2: opcode EXT2 (0x83) would import code (extension registry code 513)"}},
    {B("\x80\x02\x84\x01\x00\x00\x00."), {"byte 2: opcode EXT4 (0x84) would import code", NULL, NULL}},
    {B("\x80\x05\x97."), {"byte 2: opcode NEXT_BUFFER (0x97) needs out-of-band buffers", NULL, NULL}},
    {B("\x80\x05N\x98."), {"byte 3: opcode READONLY_BUFFER (0x98) needs out-of-band buffers", NULL, NULL}},
    {B("S'abc'\n."), {"byte 0: opcode STRING ('S') is not supported", NULL, NULL}},
    {B("\x80\x02\xff."), {"byte 2: unknown opcode 0xff", NULL, NULL}},
    {B("\x00"), {"byte 0: unknown opcode 0x00", NULL, NULL}},
    {B("\x80\x02(K\x01z."), {"byte 5: unknown opcode 0x7a", NULL, NULL}},
};

/* Malformed data: the reader must say what is wrong and where. */
static const bad malformed[] = {
    {B(""), {"byte 0: the file is empty: not a pickle", NULL, NULL}},
    {B("Thread,Time,Action\n"), {"byte 0: BINSTRING:", "(no PROTO opcode at byte 0: is this a pickle?)", NULL}},
    {B("\x80\x02N"), {"byte 3: the file ends before STOP: truncated", NULL, NULL}},
    {B("\x80\x02h\x05."), {"byte 2: BINGET: memo id 5 was never stored", NULL, NULL}},
    {B("\x80\x02g5\n."), {"byte 2: GET: memo id 5 was never stored", NULL, NULL}},
    {B("\x80\x02](K\x01K\x02u."), {"byte 8: SETITEMS: the target is a list, expected a dict", NULL, NULL}},
    {B("\x80\x02}(K\x01" "e."), {"APPENDS: the target is a dict, expected a list", NULL, NULL}},
    {B("\x80\x02)K\x01" "a."), {"APPEND: the target is a tuple, expected a list", NULL, NULL}},
    {B("\x80\x02NK\x01s."), {"SETITEM: needs 3 values", NULL, NULL}},
    {B("\x80\x02."), {"byte 2: STOP: needs 1 value on the stack, found 0", NULL, NULL}},
    {B("\x80\x02(."), {"STOP: needs 1 value on the stack above the last MARK", NULL, NULL}},
    {B("\x80\x02(N."), {"STOP: 1 MARK was never closed", NULL, NULL}},
    {B("\x80\x02NN."), {"STOP: 1 value left on the stack", NULL, NULL}},
    {B("N.N"), {"byte 1: STOP: 1 bytes follow the end of the pickle", NULL, NULL}},
    {B("\x80\x06N."), {"byte 0: PROTO: protocol 6 is newer than 5", NULL, NULL}},
    {B("\x80\x02X\xe8\x03\x00\x00" "abc."), {"byte 2: BINUNICODE: a string of 1000 bytes runs past the end"}},
    {B("\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00N."), {"FRAME: the frame of 255 bytes runs past the end"}},
    {B("\x80\x02X\x02\x00\x00\x00\xc3\x28."), {"BINUNICODE: the string is not valid UTF-8", NULL, NULL}},
    {B("\x80\x02\x8c\x02\xc0\xaf."), {"not valid UTF-8", NULL, NULL}},       /* overlong */
    {B("\x80\x02\x8c\x04\xf4\x90\x80\x80."), {"not valid UTF-8", NULL, NULL}}, /* above U+10FFFF */
    {B("\x80\x02(K\x01" "d."), {"DICT: 1 values for key/value pairs: odd", NULL, NULL}},
    {B("\x80\x02}(]K\x01" "u."), {"SETITEMS: a dict key is a list: unhashable", NULL, NULL}},
    {B("\x80\x02" "0"), {"POP: the stack is empty", NULL, NULL}},
    {B("\x80\x02" "1."), {"POP_MARK: no MARK to close", NULL, NULL}},
    {B("\x80\x02" "2."), {"DUP: needs 1 value", NULL, NULL}},
    {B("\x80\x02" "e."), {"APPENDS: no MARK to close", NULL, NULL}},
    {B("\x80\x02(K\x01" "e."), {"APPENDS: no list below the MARK", NULL, NULL}},
    {B("\x80\x02\x8b\xff\xff\xff\xff."), {"LONG4: negative length", NULL, NULL}},
    {B("\x80\x02T\xff\xff\xff\xff."), {"BINSTRING: negative length", NULL, NULL}},
    {B("\x80\x02U\x01\xe9."), {"SHORT_BINSTRING: byte 0xe9 at offset 0 of a Python 2 string is not ASCII"}},
    {B("I12x\n."), {"INT: '12x' is not an integer", NULL, NULL}},
    {B("L12"), {"LONG: its text argument has no newline", NULL, NULL}},
    {B("F1.5x\n."), {"FLOAT: '1.5x' is not a float", NULL, NULL}},
    {B("Va\\u12\n."), {"UNICODE: bad \\u escape", NULL, NULL}},
    {B("Va\\U00110000\n."), {"UNICODE: \\U escape beyond U+10FFFF", NULL, NULL}},
    {B("Np-1\n."), {"PUT: negative memo id -1", NULL, NULL}},
    {B("\x80\x02K"), {"BININT1: the argument of 1 bytes runs past the end", NULL, NULL}},
};

static void check_bad(const bad *b, fl_status want)
{
    fli_pk_doc *doc = (fli_pk_doc *)1;
    fl_status s = fli_pickle_load_memory(b->bytes, b->len, "t.pickle", 1 << 20, &doc);
    CHECK_STATUS(s, want);
    CHECK(doc == NULL);
    CHECK(!strncmp(fl_last_error(), "t.pickle: ", 10));
    for (int i = 0; i < 3 && b->needles[i]; i++)
        CHECK(msg_has(b->needles[i]));
    if (s == FL_OK)
        fli_pickle_free(doc);
}

static void test_refused(void)
{
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        check_bad(&refused[i], FL_ERR_PARSE);
    /* A class reference inside real-looking data is still refused where it stands. */
    fli_pk_doc *doc;
    static const char torch_like[] = "\x80\x02}q\x00X\x01\x00\x00\x00tq\x01"
                                     "ctorch._utils\n_rebuild_tensor_v2\nq\x02s.";
    CHECK_STATUS(fli_pickle_load_memory(torch_like, sizeof torch_like - 1, "snap.pickle", 0, &doc),
                 FL_ERR_PARSE);
    CHECK(msg_has("snap.pickle: byte 13: opcode GLOBAL ('c') would import code "
                  "(torch._utils._rebuild_tensor_v2)"));
}

static void test_malformed(void)
{
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++)
        check_bad(&malformed[i], FL_ERR_PARSE);
    /* A text LONG beyond Python's 4300 digits. */
    size_t n = 4400;
    char *t = malloc(n + 4);
    t[0] = 'L';
    memset(t + 1, '7', n);
    memcpy(t + 1 + n, "\n.", 2);
    fli_pk_doc *doc;
    CHECK_STATUS(fli_pickle_load_memory(t, n + 3, "t", 0, &doc), FL_ERR_PARSE);
    CHECK(msg_has("is not an integer of at most 4300 digits"));
    /* 4300 digits are fine. */
    memcpy(t + 1 + 4300, "\n.", 2);
    CHECK_OK(fli_pickle_load_memory(t, 4303, "t", 0, &doc));
    if (doc) {
        CHECK(fli_pk_doc_root(doc)->type == FL_PK_BIGINT);
        fli_pickle_free(doc);
    }
    free(t);
}

/* Every prefix of a valid pickle is an error (STOP is the last byte), never a crash. */
static void test_truncation(void)
{
    size_t tried = 0;
    for (size_t k = 0; k < N_KNOWN; k++) {
        const known *c = &knowns[k];
        for (size_t len = 0; len < c->len; len++) {
            /* A fresh copy of exactly len bytes, so valgrind sees any read past the end. */
            uint8_t *cut = malloc(len ? len : 1);
            memcpy(cut, c->data, len);
            fli_pk_doc *doc = NULL;
            fl_status s = fli_pickle_load_memory(cut, len, c->name, 0, &doc);
            CHECK_STATUS(s, FL_ERR_PARSE);
            CHECK(doc == NULL && fl_last_error()[0]);
            if (s == FL_OK)
                fli_pickle_free(doc);
            free(cut);
            tried++;
        }
    }
    printf("truncation: %zu prefixes, all refused cleanly\n", tried);
}

/* Random corruption: flipped, replaced, inserted and deleted bytes. Any outcome but a
 * crash, a leak (valgrind) or a silent inconsistency is fine. */
static void test_corruption(void)
{
    fl_rng rng = {UINT64_C(0x9e3779b97f4a7c15)};
    size_t ok = 0, refused_n = 0;
    for (size_t k = 0; k < N_KNOWN; k++) {
        const known *c = &knowns[k];
        for (int v = 0; v < 400; v++) {
            size_t len = c->len;
            uint8_t *m = malloc(len + 8);
            memcpy(m, c->data, len);
            int edits = 1 + (int)fl_rng_below(&rng, 4);
            for (int e = 0; e < edits; e++) {
                size_t at = (size_t)fl_rng_below(&rng, len);
                switch (fl_rng_below(&rng, 4)) {
                case 0:
                    m[at] ^= (uint8_t)(1u << fl_rng_below(&rng, 8));
                    break;
                case 1:
                    m[at] = (uint8_t)fl_rng_next(&rng);
                    break;
                case 2: /* insert */
                    if (len < c->len + 8) {
                        memmove(m + at + 1, m + at, len - at);
                        m[at] = (uint8_t)fl_rng_next(&rng);
                        len++;
                    }
                    break;
                default: /* delete */
                    if (len > 1) {
                        memmove(m + at, m + at + 1, len - at - 1);
                        len--;
                    }
                }
            }
            uint8_t *exact = malloc(len);
            memcpy(exact, m, len);
            free(m);
            fli_pk_doc *doc = NULL;
            fl_status s = fli_pickle_load_memory(exact, len, "fuzz", 1 << 20, &doc);
            if (s == FL_OK) {
                sbuf b = {0};
                dump(&b, fli_pk_doc_root(doc), 0); /* touches every reachable value */
                free(b.s);
                fli_pickle_free(doc);
                ok++;
            } else {
                CHECK(doc == NULL);
                CHECK(s == FL_ERR_PARSE);
                CHECK(!strncmp(fl_last_error(), "fuzz: byte ", 11));
                refused_n++;
            }
            free(exact);
        }
    }
    printf("corruption: %zu variants, %zu still parse, %zu refused cleanly\n", ok + refused_n, ok, refused_n);
}

/* ---- bounded memory --------------------------------------------------------------------- */

static void test_memory_bound(void)
{
    fli_pk_doc *doc;
    /* The smallest limit that works for a document, and a clear error below it. */
    size_t lim = 1024, first_ok = 0;
    for (; lim < (1 << 20); lim += 1024) {
        fl_status s = fli_pickle_load_memory(p4_values, sizeof p4_values, "p4", lim, &doc);
        if (s == FL_OK) {
            first_ok = lim;
            CHECK(fli_pk_doc_bytes(doc) <= lim);
            fli_pickle_free(doc);
            break;
        }
        CHECK_STATUS(s, FL_ERR_PARSE);
        CHECK(msg_has("the pickle needs more than the memory limit of"));
    }
    CHECK(first_ok > 0 && first_ok <= 64 * 1024);
    printf("memory: p4_values (%zu bytes) parses within %zu bytes\n", sizeof p4_values, first_ok);

    /* Bombs: a million DUPs (the stack), a million MARKs, a huge memo id, a huge
     * announced length. Each refused under a 1 MiB limit without allocating past it. */
    size_t n = 1000000;
    uint8_t *bomb = malloc(n + 8);
    memcpy(bomb, "\x80\x02N", 3);
    memset(bomb + 3, '2', n);
    bomb[n + 3] = '.';
    CHECK_STATUS(fli_pickle_load_memory(bomb, n + 4, "dup", 1 << 20, &doc), FL_ERR_PARSE);
    CHECK(msg_has("dup: byte "));
    CHECK(msg_has("memory limit of 1.00 MiB"));
    memset(bomb + 2, '(', n);
    CHECK_STATUS(fli_pickle_load_memory(bomb, n + 4, "mark", 1 << 20, &doc), FL_ERR_PARSE);
    CHECK(msg_has("memory limit"));
    /* A list of a million Nones: 8 MB of pointers. */
    memcpy(bomb, "\x80\x02](", 4);
    memset(bomb + 4, 'N', n);
    memcpy(bomb + 4 + n, "e.", 2);
    CHECK_STATUS(fli_pickle_load_memory(bomb, n + 6, "list", 1 << 20, &doc), FL_ERR_PARSE);
    CHECK(msg_has("memory limit"));
    CHECK_OK(fli_pickle_load_memory(bomb, n + 6, "list", 64 << 20, &doc));
    if (doc) {
        CHECK_EQ_U64(fli_pk_len(fli_pk_doc_root(doc)), n);
        fli_pickle_free(doc);
    }
    /* A memo id past the file's length (Python writes none) costs one entry, not an
     * array up to it: a PUT of 2^32-1 parses within 64 KiB (it needed 32 GiB, refused);
     * a hundred thousand such ids are still charged, and refused under 1 MiB. */
    static const uint8_t far[] = "\x80\x02]r\xff\xff\xff\xff" "0j\xff\xff\xff\xff.";
    CHECK_OK(fli_pickle_load_memory(far, sizeof far - 1, "far", 64 << 10, &doc));
    if (doc) {
        CHECK(fli_pk_doc_root(doc)->type == FL_PK_LIST);
        fli_pickle_free(doc);
    }
    memcpy(bomb, "\x80\x02N", 3);
    size_t ids = 100000, at = 3;
    for (size_t i = 0; i < ids; i++) {
        uint32_t id = 0x80000000u + (uint32_t)i;
        bomb[at++] = 'r'; /* LONG_BINPUT, a little-endian uint32 */
        for (int k = 0; k < 4; k++)
            bomb[at++] = (uint8_t)(id >> (8 * k));
    }
    bomb[at++] = '.';
    CHECK_STATUS(fli_pickle_load_memory(bomb, at, "far", 1 << 20, &doc), FL_ERR_PARSE);
    CHECK(msg_has("memory limit"));
    static const uint8_t bigstr[] = "\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f" "abc.";
    CHECK_STATUS(fli_pickle_load_memory(bigstr, sizeof bigstr - 1, "len", 1 << 20, &doc), FL_ERR_PARSE);
    CHECK(msg_has("runs past the end"));

    /* A million nested lists: no recursion in the reader nor in freeing. */
    memcpy(bomb, "\x80\x02", 2);
    size_t depth = n / 2;
    memset(bomb + 2, ']', depth);
    memset(bomb + 2 + depth, 'a', depth - 1);
    bomb[2 + 2 * depth - 1] = '.';
    CHECK_OK(fli_pickle_load_memory(bomb, 2 * depth + 2, "deep", 256 << 20, &doc));
    if (doc) {
        const fli_pk *o = fli_pk_doc_root(doc);
        size_t d = 0;
        while (fli_pk_len(o) == 1) {
            o = fli_pk_item(o, 0);
            d++;
        }
        CHECK_EQ_U64(d, depth - 1);
        fli_pickle_free(doc);
    }
    free(bomb);
}

/* ---- files -------------------------------------------------------------------------------- */

static void test_files(void)
{
    char path[] = "/tmp/fl_test_pickle_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    CHECK(write(fd, p2_values, sizeof p2_values) == (ssize_t)sizeof p2_values);
    close(fd);
    fli_pk_doc *doc;
    CHECK_OK(fli_pickle_load(path, 0, &doc));
    if (doc) {
        CHECK(!strcmp(fli_pk_doc_name(doc), path));
        fli_pickle_free(doc);
    }
    /* The file's own size counts against the limit. */
    CHECK_STATUS(fli_pickle_load(path, 100, &doc), FL_ERR_PARSE);
    CHECK(msg_has("over the memory limit"));
    CHECK(doc == NULL);
    unlink(path);
    CHECK_STATUS(fli_pickle_load(path, 0, &doc), FL_ERR_IO);
    CHECK(msg_has("cannot open"));
    CHECK_STATUS(fli_pickle_load("/tmp", 0, &doc), FL_ERR_IO);
}

int main(void)
{
    test_known_answers();
    test_structure();
    test_lookups();
    test_refused();
    test_malformed();
    test_truncation();
    test_corruption();
    test_memory_bound();
    test_files();
    return fl_test_done("test_pickle");
}
