"""What the README and the docs show is what the commands print: every
block marked ``<!-- shown: SCENARIO -->`` runs on the embedded server and
its output is compared, numbers and paths aside (``shown_output``).

``make docs`` writes what the commands printed into the docs instead.
"""

import pytest

from shown_output import compare, read_blocks, rewrite, run_command, scenarios, write_file

# make run, a recording server, and four more servers with their warmups.
MODULE_TIMEOUT_S = 600

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


def test_every_shown_output_is_what_the_commands_print(tmp_path, request):
    blocks = read_blocks()
    assert blocks, "no shown output marked in the docs"
    failures, outputs = [], {}
    with scenarios(tmp_path) as running:
        for number, block in enumerate(blocks):
            outputs[number] = []
            if block.file is not None:
                write_file(running[block.scenario], block)
            for command, expected in block.commands:
                printed = run_command(running[block.scenario], command)
                outputs[number].append(printed)
                difference = compare(expected, printed)
                if difference:
                    failures.append(f"{block.path.name}:{block.start + 1}: $ {command}\n  {difference}")
    if request.config.getoption("--write-docs"):
        rewrite(blocks, outputs)
        return
    assert not failures, "\n".join(failures)
