"""The CLI reference, generated from the Typer app: every command, its help, arguments and options.

Each option's line is what `polymodal VERB --help` prints for it (`get_help_record`), so the page cannot drift from
the code.
"""

from __future__ import annotations

import html
from typing import Any


def _cell(text: str) -> str:
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _code(text: str) -> str:
    # raw HTML: in a markdown table an escaped pipe inside backticks would show its backslash
    return f"<code>{html.escape(' '.join(text.split()), quote=False).replace('|', '&#124;')}</code>"


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    out = []
    for name, cmd in group.commands.items():
        if getattr(cmd, "hidden", False):
            continue
        full = f"{prefix} {name}"
        if hasattr(cmd, "commands"):  # a sub-app, e.g. `polymodal rl`
            out += _commands(cmd, full)
        else:
            out.append((full, cmd))
    return out


def _command(full: str, cmd: Any) -> list[str]:
    ctx = cmd.make_context(full, [], resilient_parsing=True)
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    opts = [p for p in cmd.params if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    usage = " ".join([full] + [p.name.upper() for p in args] + (["[OPTIONS]"] if opts else []))
    anchor = full.replace(" ", "-")
    out = [f"## `{full}` {{#{anchor}}}\n", f"```\n{usage}\n```\n"]
    if cmd.help:
        # the docstring's paragraphs; rich markup is not used in polymodal's help texts
        out.append("\n\n".join(" ".join(par.split()) for par in cmd.help.split("\n\n")) + "\n")
    rows = [p.get_help_record(ctx) for p in args + opts]
    rows = [r for r in rows if r]
    if rows:
        out += ["| argument / option | help |", "|---|---|"]
        out += [f"| {_code(names)} | {_cell(help_)} |" for names, help_ in rows]
        out.append("")
    return out


def render() -> str:
    """The markdown of the reference: one section per command, in the order of `polymodal --help`."""
    import importlib

    import typer

    cli = importlib.import_module("polymodal.cli")
    # the app `main` runs; found by type, so the CLI may move it between its modules
    app = getattr(cli, "app", None) or next(v for v in vars(cli).values() if isinstance(v, typer.Typer))
    root = typer.main.get_command(app)
    out: list[str] = []
    ctx = root.make_context("polymodal", [], resilient_parsing=True)
    glob = [p.get_help_record(ctx) for p in root.params if not getattr(p, "hidden", False)]
    glob = [r for r in glob if r]
    if glob:
        out += ["Options of `polymodal` itself, before the command:\n", "| option | help |", "|---|---|"]
        out += [f"| {_code(names)} | {_cell(help_)} |" for names, help_ in glob]
        out.append("")
    for full, cmd in _commands(root, "polymodal"):
        out += _command(full, cmd)
    return "\n".join(out)


if __name__ == "__main__":  # python docs/hooks/gen_cli.py: print the page's generated part
    print(render())
