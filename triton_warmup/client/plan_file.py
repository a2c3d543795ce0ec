"""Read a warmup plan file (YAML or JSON) and check it before it is sent.

The checks are the helper's own (``warmup_request.parse_plan_document``), run
here too so that an error names the file and line at fault instead of
arriving from the server as a path. What only the server can check (the
models exist, the inputs and data files are there) still comes back from it.
See ``plans/example.yaml`` for the format.

``python plan_file.py PLAN...`` checks plan files without a server (for CI,
or before a server starts: deploy/entrypoint.sh does). Exit codes: 0 every
plan is valid, 2 one is not.
"""

import argparse
import json
import pathlib
import sys
from typing import Any, List, Optional, Tuple

import yaml

from triton_warmup.client import flags as client_flags
from triton_warmup.helper.request import WarmupRequest, WarmupRequestError, parse_plan_document


class PlanFileError(ValueError):
    """A plan file that cannot be used; the message names the file and line."""


def _node_line(root: Optional[yaml.Node], path: Tuple) -> Optional[int]:
    """The 1-based line of the value at ``path`` (or of the deepest part of
    it that exists; of the key itself when the last step is a key)."""
    node, line = root, None
    for step in path:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(step):
                    node = value
                    line = key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
            line = node.start_mark.line + 1
        else:
            return line
    if line is None and node is not None:
        line = node.start_mark.line + 1
    return line


def _duplicate_key(node: Optional[yaml.Node]) -> Optional[Tuple[str, int]]:
    """The first key that appears twice in one mapping, with its line: YAML
    loaders keep the last one silently, which hides a mistake."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if key.value in seen:
                return key.value, key.start_mark.line + 1
            seen.add(key.value)
            found = _duplicate_key(value)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_key(item)
            if found:
                return found
    return None


def _steps_in(node: Any, text: str) -> Tuple[Tuple, str]:
    """Split the path the helper wrote in front of an error (``.models.m[2]``)
    into steps, guided by the document so that keys holding dots still match."""
    steps = []
    while text:
        if isinstance(node, dict) and text.startswith("."):
            # The longest key that the text continues with, then a separator.
            keys = sorted((str(key) for key in node), key=len, reverse=True)
            key = next((k for k in keys if text[1:].startswith(k) and text[1 + len(k):][:1] in ("", ".", "[", ":")), None)
            if key is None:
                break
            steps.append(key)
            node, text = node[key], text[1 + len(key):]
        elif isinstance(node, list) and text.startswith("["):
            index, _, rest = text[1:].partition("]")
            if not index.isdigit() or int(index) >= len(node):
                break
            steps.append(int(index))
            node, text = node[int(index)], rest
        else:
            break
    return tuple(steps), text


def locate_server_error(path: pathlib.Path, message: str) -> Optional[str]:
    """The helper's error about a plan (``PLAN.models.m.data.x.file: ...``)
    with the plan file's line in front, or ``None`` if it is not about one."""
    marker = message.find("PLAN.")
    if marker < 0:
        return None
    try:
        text = path.read_text(encoding="utf-8")
        document = yaml.safe_load(text) if path.suffix.lower() != ".json" else json.loads(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    steps, rest = _steps_in(document, message[marker + len("PLAN"):])
    if not steps or not rest.startswith(": "):
        return None
    line = _node_line(root, steps)
    where = ".".join(str(step) for step in steps)
    return f"{path}{f', line {line}' if line else ''}: {where}: {rest[2:]}"


def load_plan(path: pathlib.Path, helper_name: str = client_flags.HELPER_MODEL) -> Tuple[Any, WarmupRequest]:
    """Read and check the plan file at ``path``.

    Returns the document (to send as the PLAN input) and the parsed request.

    Raises:
        PlanFileError: naming the file, the line and what is wrong.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PlanFileError(f"{path}: cannot read the plan: {error}") from None
    root = None
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except ValueError as error:
            line = getattr(error, "lineno", "?")
            raise PlanFileError(f"{path}, line {line}: not valid JSON: {error}") from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            root = None  # valid JSON that PyYAML reads differently: no line numbers
    else:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = mark.line + 1 if mark is not None else "?"
            problem = getattr(error, "problem", None) or str(error)
            raise PlanFileError(f"{path}, line {line}: not valid YAML: {problem}") from None
    duplicate = _duplicate_key(root)
    if duplicate:
        raise PlanFileError(f"{path}, line {duplicate[1]}: key '{duplicate[0]}' appears twice")
    try:
        request = parse_plan_document(document, helper_name)
    except WarmupRequestError as error:
        line = _node_line(root, error.path)
        where = ".".join(str(step) for step in error.path) or "the plan"
        at = f", line {line}" if line else ""
        raise PlanFileError(f"{path}{at}: {where}: {error.message}") from None
    return document, request


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
