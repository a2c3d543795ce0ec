#!/usr/bin/env python3
"""Warm models through warmup_helper (the triton-warmup command).

The code is in ``triton_warmup.client.warm``; this file keeps the command the seed named.
"""

import sys

from triton_warmup.client.warm import main

if __name__ == "__main__":
    sys.exit(main())
