"""Help that teaches (issue 15, point 6): every option of every command says what it is, its
default and unit; no reST markup reaches the terminal; every workload is listed."""

import argparse
import re

import pytest

from nvemu.cli.main import build_parser
from nvemu.guest.workloads import WORKLOADS

REST = re.compile(r"``|:(class|func|mod|meth|attr|data):`|\.\. [a-z]+::")


def commands(parser=None, prefix=("nvemu",)):
    parser = parser or build_parser()
    yield " ".join(prefix), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from commands(child, (*prefix, name))


COMMANDS = dict(commands())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_with_its_default(name):
    parser = COMMANDS[name]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        what = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{name} {what}: no help"
        takes_value = action.nargs != 0
        if action.option_strings and takes_value and not action.required:
            assert "default" in action.help, f"{name} {what}: help does not state the default: {action.help!r}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_no_rest_markup_in_terminal_help(name):
    text = COMMANDS[name].format_help()
    assert not REST.search(text), f"{name}: {REST.search(text).group(0)!r} in help"


def test_gen_lists_every_workload():
    text = COMMANDS["nvemu gen"].format_help()
    for w in WORKLOADS:
        assert w in text
    assert "fha-readback" in text


def test_output_options_are_consistent():
    """Files are written with -o/--output; directories too (--out stays an alias)."""
    for name, parser in COMMANDS.items():
        for action in parser._actions:
            if "--out" in action.option_strings or "--output" in action.option_strings:
                assert {"-o", "--output"} <= set(action.option_strings), name


def test_exit_columns_come_from_the_exit_reasons():
    """One exit column per Intel exit reason nvemu models, named and numbered from ExitReason (the
    vocabulary no longer restates the numbers), and each JSON exit keyed by the same name."""
    from nvemu._constants import ExitReason
    from nvemu.tools.vocabulary import COLUMNS, exit_columns, exits_by_name
    for reason in ExitReason:
        name = reason.name.lower()
        column = COLUMNS[f"exits_{name}"]
        assert column.header == f"{name} ({int(reason)})" and f"basic exit reason {int(reason)}" in column.meaning
        assert exits_by_name({int(reason): 7})[name] == {"reason": int(reason), "count": 7}
    assert set(exit_columns({})) == {f"exits_{r.name.lower()}" for r in ExitReason} | {"exits"}


def test_pmemcheck_options_read_the_same_wherever_a_log_is_read():
    """import and replay take --skip-unregistered and --deep-flush from one definition."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {name: {a.dest: a.help for a in sub.choices[name]._actions if a.dest in ("skip_unregistered", "deep_flush")}
             for name in ("import", "replay")}
    assert helps["import"] == helps["replay"] and len(helps["import"]) == 2
