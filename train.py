"""``python train.py ...``: the ``wsss`` command run from a checkout (``make stage=...`` runs this).

Everything lives in ``wsss.cli`` (the entry point of the installed ``wsss`` console script, which
also runs ``wsss demo``); ``python train.py --help`` lists the stages, recipes and example commands.
"""

import sys

from wsss.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
