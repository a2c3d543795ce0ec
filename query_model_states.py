#!/usr/bin/env python3
"""Report model states (the triton-warmup-states command).

The code is in ``triton_warmup.client.states``; this file keeps the command the seed named.
"""

import sys

from triton_warmup.client.states import main

if __name__ == "__main__":
    sys.exit(main())
