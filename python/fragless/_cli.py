"""The `fragless` command from Python: `python -m fragless ...` and the console entry
point run the CLI binary that the wheel carries (fragless/bin/fragless, with the preload
library beside it for `fragless run`), else the source checkout's build folder."""
import os
import sys


def cli_path():
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, "bin", "fragless"), os.path.join(here, "..", "..", "build", "fragless")):
        if os.access(path, os.X_OK):
            return os.path.realpath(path)
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = cli_path()
    if not path:
        sys.stderr.write("fragless: the fragless CLI is not in this installation (fragless/bin/fragless); "
                         "install the package with `pip install ./python` from a fragless checkout\n")
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(path, ["fragless"] + list(argv))
