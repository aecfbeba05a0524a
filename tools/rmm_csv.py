"""RMM CSV logs (Thread,Time,Action,Pointer,Size,Stream) for the scripts in tools/: the
header check and the errors for bad lines (FILE:LINE: what was wrong) in one place."""
import sys

HEADER = ['Thread', 'Time', 'Action', 'Pointer', 'Size', 'Stream']


def events(path):
    """Per line after the header: (line number, action, pointer, size, stream); size is
    the Size field as a number for allocations, None otherwise. Exits with a message
    naming the file and line on a file that cannot be read or a malformed line."""
    try:
        f = open(path)
    except OSError as e:
        sys.exit("%s: %s" % (path, e.strerror))
    with f:
        header = f.readline().strip().split(',')
        if header[:6] != HEADER:
            sys.exit("%s:1: not an RMM CSV log (header %s)" % (path, ','.join(header)))
        for line_no, line in enumerate(f, 2):
            t = line.rstrip('\n').split(',')
            if len(t) < 6:
                sys.exit("%s:%d: expected 6 fields, got %d" % (path, line_no, len(t)))
            size = None
            if t[2] == 'allocate':
                try:
                    size = int(t[4])
                except ValueError:
                    sys.exit("%s:%d: size %r is not a number" % (path, line_no, t[4]))
            yield line_no, t[2], t[3], size, t[5]
