"""`python -m securechat` is the `securechat` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
