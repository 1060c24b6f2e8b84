"""`python -m llm.cli ...` is `llm ...`."""

import sys

from llm.cli import main

sys.exit(main())
