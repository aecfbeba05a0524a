"""python -m fragless ARGS: the fragless CLI (fragless._cli)."""
import sys

from fragless._cli import main

sys.exit(main())
