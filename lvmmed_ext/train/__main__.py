"""``python -m lvmmed_ext.train [options]``: same as ``lvmmed pretrain``."""

from .cli import main

raise SystemExit(main())
