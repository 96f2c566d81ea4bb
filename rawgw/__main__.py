"""`python -m rawgw` is the same program as the `rawgw` console script."""

from rawgw.cli import main

raise SystemExit(main())
