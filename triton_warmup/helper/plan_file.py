"""Read a warmup plan file (YAML or JSON) and check it, naming the file's line at fault.

The checks are the helper's own (``request.parse_plan_document``): the
clients run them before a plan is sent, and the helper runs them on its
``warm_on_start`` plan in ``initialize``, so that an error names the file and
line instead of a path into the document. What only planning against the
repository can check (the models exist, the inputs and data files are there)
comes after. See ``plans/example.yaml`` for the format.
"""

import json
import pathlib
from typing import Any, Optional, Tuple

import yaml

from triton_warmup import HELPER_MODEL
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


def _compose(text: str) -> Optional[yaml.Node]:
    """The plan's YAML node tree, for line numbers; ``None`` for valid JSON
    that PyYAML reads differently."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def locate_plan_error(
    path: pathlib.Path, error: WarmupRequestError, root: Optional[yaml.Node] = None
) -> Optional[str]:
    """The helper's error about the plan at ``path`` with the file's line in
    front, or ``None`` when the error is not about the plan document.
    ``root`` is the plan's node tree when the caller has it already."""
    if error.field != "PLAN":
        return None
    if root is None:
        try:
            root = _compose(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            root = None
    line = _node_line(root, error.path) if root is not None else None
    where = ".".join(str(step) for step in error.path) or "the plan"
    return f"{path}{f', line {line}' if line else ''}: {where}: {error.message}"


def load_plan(path: pathlib.Path, helper_name: str = HELPER_MODEL) -> Tuple[Any, WarmupRequest]:
    """Read and check the plan file at ``path``.

    Returns the document (to send as the PLAN input) and the parsed request.

    Raises:
        PlanFileError: naming the file, the line and what is wrong.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PlanFileError(f"{path}: cannot read the plan: {error}") from None
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except ValueError as error:
            line = getattr(error, "lineno", "?")
            raise PlanFileError(f"{path}, line {line}: not valid JSON: {error}") from None
        root = _compose(text)
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
        raise PlanFileError(locate_plan_error(path, error, root)) from None
    return document, request
