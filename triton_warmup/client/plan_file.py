"""``triton-warmup-check-plan PLAN...``: check plan files without a server.

For CI, or before a server starts. The reading and checking is the helper's
own (``helper.plan_file``), so a plan that passes here passes in the helper,
and an error names the file and line at fault. What only the server can
check (the models exist, the inputs and data files are there) still comes
back from it. Exit codes: 0 every plan is valid, 2 one is not.
"""

import argparse
import pathlib
import sys
from typing import List, Optional

from triton_warmup.client import flags as client_flags
from triton_warmup.helper.plan_file import PlanFileError, load_plan, locate_plan_error

__all__ = ["PlanFileError", "load_plan", "locate_plan_error", "main"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("plans", nargs="+", type=pathlib.Path, metavar="PLAN", help="Plan files to check.")
    client_flags.add_helper_flag(parser)
    args = parser.parse_args(argv)
    code = 0
    for path in args.plans:
        try:
            _, plan = load_plan(path, args.model_name)
        except PlanFileError as error:
            print(f"FAILED: {error}", file=sys.stderr)
            code = 2
            continue
        models = list(plan.models) + (["every other model of the repository"] if plan.all_models else [])
        print(f"PASS: {path}: mode {plan.mode}, models {models}")
    return code


if __name__ == "__main__":
    sys.exit(main())
