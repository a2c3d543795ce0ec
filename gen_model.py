#!/usr/bin/env python3
"""Write the example TorchScript models into a repository.

The code is in ``triton_warmup.example_models``; this file keeps the command the seed named.
"""

import sys

from triton_warmup.example_models import main

if __name__ == "__main__":
    sys.exit(main())
