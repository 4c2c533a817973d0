"""`python -m stylebatch_operator [--namespace NS ...]`: the same as `stylebatch operator` (one entry
point, one set of flags: stylebatch.cli's)."""

import sys

from stylebatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["operator", *sys.argv[1:]]))
