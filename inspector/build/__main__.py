"""`python -m inspector.build ...` is `inspector-build-engine ...` (what auto_rebuild runs in a child process)."""

import sys

from inspector.build.cli import main

sys.exit(main())
