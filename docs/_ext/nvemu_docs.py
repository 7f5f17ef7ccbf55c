"""Sphinx directives that generate reference pages from the code, so they cannot drift from it:

``.. nvemu-cli::``      every command of ``nvemu``, from the argparse parsers (usage, description,
                        every option with its help)
``.. nvemu-columns::``  the results vocabulary (:data:`nvemu.tools.vocabulary.COLUMNS`)
``.. nvemu-timing::``   the timing model's parameters, defaults and sources
"""

from __future__ import annotations

import argparse

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.util.nodes import nested_parse_with_titles


def _escape(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")
            .replace("_", "\\_"))


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...]):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                yield (*prefix, name), helps.get(name, ""), child
                yield from _commands(child, (*prefix, name))


def _option_lines(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                metavar = " " + (action.metavar or (("{" + ",".join(map(str, action.choices)) + "}")
                                                     if action.choices else action.dest.upper()))
                if action.nargs == "+":
                    metavar += " ..."
            head = ", ".join(f"{o}{metavar}" for o in action.option_strings)
        else:
            head = action.metavar or action.dest
        out += [f"``{head}``", f"    {_escape(action.help or '')}", ""]
    return out


class CliDirective(Directive):
    """The CLI reference, one section per command."""

    def run(self):
        from nvemu.cli.main import build_parser
        root = build_parser()
        lines = []
        for path, summary, parser in _commands(root, ("nvemu",)):
            title = " ".join(path)
            lines += [title, "-" * len(title), ""]
            if summary:
                lines += [_escape(summary[0].upper() + summary[1:]) + ".", ""]
            lines += ["::", ""] + ["    " + u for u in parser.format_usage().rstrip().splitlines()] + [""]
            if parser.description:
                lines += [_escape(parser.description), ""]
            if parser.epilog:
                lines += ["::", ""] + ["    " + u for u in parser.epilog.splitlines()] + [""]
            lines += _option_lines(parser)
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="nvemu-cli"), node)
        return node.children


class ColumnsDirective(Directive):
    """The results vocabulary as a table."""

    def run(self):
        from nvemu.tools.vocabulary import COLUMNS
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 22 18 60", "",
                 "   * - column", "     - unit", "     - meaning"]
        for c in COLUMNS.values():
            lines += [f"   * - ``{c.name}``", f"     - {_escape(c.unit) or '-'}", f"     - {_escape(c.meaning)}"]
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="nvemu-columns"), node)
        return node.children


class TimingDirective(Directive):
    """The timing model's parameters: default, and the source of each (or why it is free)."""

    def run(self):
        from nvemu import TimingModel
        from nvemu.machine.config import TIMING_SOURCES
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 22 10 68", "",
                 "   * - parameter", "     - default", "     - source"]
        for k, v in TimingModel().to_dict().items():
            lines += [f"   * - ``{k}``", f"     - {v:g}", f"     - {_escape(TIMING_SOURCES[k])}"]
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="nvemu-timing"), node)
        return node.children


def setup(app):
    app.add_directive("nvemu-cli", CliDirective)
    app.add_directive("nvemu-columns", ColumnsDirective)
    app.add_directive("nvemu-timing", TimingDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
