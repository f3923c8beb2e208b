"""`python -m modelyard_conformance ...` is `modelyard conformance ...`."""

import sys

from .cli import conformance_main

sys.exit(conformance_main())
