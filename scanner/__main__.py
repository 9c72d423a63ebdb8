"""`python -m scanner` is the `tls-scanner` command."""

import sys

from scanner.cli import main

sys.exit(main())
