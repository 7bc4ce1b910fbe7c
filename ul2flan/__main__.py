"""`python -m ul2flan ...` is the `ul2flan` command."""

import sys

from ul2flan.commands.main import main

sys.exit(main())
