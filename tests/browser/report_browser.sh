#!/usr/bin/env bash
# test_report_browser: the example trace's report as a browser shows it. Headless
# chromium dumps the DOM (sections and the figures `fragless compare` prints must be
# there) and takes a 1280x800 screenshot, which must not be blank.
# Usage: report_browser.sh FRAGLESS_BINARY SOURCE_DIR. Exit 77 (skipped) without chromium.
set -euo pipefail
cli=$1
src=$2
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "test_report_browser: SKIPPED: chromium not installed: .ci/run installs it (apt-get install chromium)"
    exit 77
fi
tmp=$(mktemp -d /tmp/fl_report_browser.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test_report_browser: FAILED: $*"; exit 1; }

"$cli" report "$src/examples/encoder_varlen.csv" -o "$tmp/report.html"
# What compare prints for fragless: min_capacity (bytes) and min_capacity / peak_live.
row=$("$cli" compare "$src/examples/encoder_varlen.csv" --policies fragless --format csv | sed -n 2p)
min_cap=$(echo "$row" | cut -d, -f7)
ratio=$(echo "$row" | cut -d, -f8)
[ -n "$min_cap" ] && [ "$min_cap" -gt 0 ] || fail "compare printed no min_capacity: $row"

run_browser() {
    timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$tmp/profile" --window-size=1280,800 "$@" "file://$tmp/report.html" 2>"$tmp/browser.err"
}
run_browser --dump-dom >"$tmp/dom.html" || { cat "$tmp/browser.err"; fail "chromium --dump-dom failed"; }
for want in 'id="compare-0"' 'id="timeline-0"' 'id="pagemap-0"' 'id="doctor-0"' \
    "data-k=\"min_capacity\" data-v=\"$min_cap\"" ">$ratio<" '<svg class="tl"' 'data-policy="cca"'; do
    grep -qF -- "$want" "$tmp/dom.html" || fail "the DOM chromium built has no '$want'"
done
run_browser --screenshot="$tmp/shot.png" >/dev/null || { cat "$tmp/browser.err"; fail "chromium --screenshot failed"; }
[ -s "$tmp/shot.png" ] || fail "no screenshot written"

# The screenshot decoded with the standard library: 1280x800, and not blank.
python3 - "$tmp/shot.png" <<'PY'
import struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
pos, idat, hdr = 8, b'', None
while pos < len(data):
    n, kind = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b'IHDR':
        hdr = struct.unpack('>IIBBBBB', body)
    elif kind == b'IDAT':
        idat += body
    pos += 12 + n
w, h, depth, ctype, _, _, interlace = hdr
assert depth == 8 and ctype in (2, 6) and interlace == 0, 'unexpected PNG format %r' % (hdr,)
bpp = 3 if ctype == 2 else 4
raw, stride = zlib.decompress(idat), w * bpp
prev, colors, ink, i = bytearray(stride), set(), 0, 0
for y in range(h):
    f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
    i += 1 + stride
    for x in range(stride):
        a = line[x - bpp] if x >= bpp else 0
        b = prev[x]
        c = prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    if y % 2 == 0:  # every other row is plenty to judge
        for x in range(0, stride, bpp * 2):
            px = bytes(line[x:x + 3])
            colors.add(px)
            ink += px != b'\xff\xff\xff'
    prev = line
sampled = (h + 1) // 2 * ((w + 1) // 2)
print('screenshot %dx%d: %d colors, %.1f%% not white' % (w, h, len(colors), 100.0 * ink / sampled))
assert (w, h) == (1280, 800), 'screenshot is %dx%d, expected 1280x800' % (w, h)
assert len(colors) >= 20, 'screenshot looks blank: %d colors' % len(colors)
assert ink >= sampled * 0.05, 'screenshot looks blank: %d of %d sampled pixels not white' % (ink, sampled)
PY
echo "test_report_browser: passed (fragless min_capacity $min_cap bytes, $ratio x peak live, in the page)"
