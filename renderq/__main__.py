"""`python -m renderq ...` is the same as the `renderq` command."""

import sys

from renderq.cli import main

sys.exit(main())
