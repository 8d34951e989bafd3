"""``python -m lvmmed_ext <command>``: same as the ``lvmmed`` console script."""

from .cli import main

raise SystemExit(main())
