"""``python -m cmb.evaluation``: the evaluation command (:mod:`cmb.evaluation.cli`)."""

import sys

from cmb.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
