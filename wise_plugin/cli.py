"""``wise-plugin``: the package's one console command.

Subcommands: ``demo`` (edit a few facts of the embedded SmolLM2 and show the effect), ``compare``
(the lifelong benchmark of several editors, :mod:`wise_plugin.runner`), ``info`` (which EasyEdit
is in use and what is registered). ``--easyedit PATH`` (or ``$WISE_PLUGIN_EASYEDIT``) selects a
source-repository EasyEdit clone for any of them (``wise-plugin compare --easyedit PATH``). With no subcommand, ``compare`` runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Optional, Sequence

from wise_plugin import demo as demo_command
from wise_plugin.host import ENV_EASYEDIT
from wise_plugin.runner import cli as compare_command

COMMANDS = ("demo", "compare", "info")


def _host_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--easyedit", metavar="PATH", default=None,
                         help="root of a source-repository EasyEdit clone (the folder holding easyeditor/) to use "
                              f"as the host; default: ${ENV_EASYEDIT}, else the installed easyeditor")
    options.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                         help="logging level (default: %(default)s)")
    return options


def info(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Print the plugin version, the host EasyEdit in use and the editors it has registered."""
    import torch
    import transformers

    import wise_plugin
    from wise_plugin.host import alg_dict, host_flavour, import_host

    module = import_host()
    table = alg_dict()
    facts = {
        "wise-plugin": wise_plugin.__version__,
        "EasyEdit": f"{host_flavour()} flavour at {module.__path__[0]}",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "WISE": f"{table['WISE'].__module__}.{table['WISE'].__name__}",
        "LEMoE": f"{table['LEMoE'].__module__}.{table['LEMoE'].__name__}",
        "host editors": ", ".join(sorted(name for name in table if name not in ("WISE", "LEMoE"))),
    }
    for key, value in facts.items():
        print(f"{key:13} {value}")
    return facts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wise-plugin", description="WISE and LEMoE lifelong editing for EasyEdit. "
                                     "Each subcommand takes --easyedit PATH and --help.")
    commands = parser.add_subparsers(dest="command", metavar="{demo,compare,info}")
    demo = commands.add_parser("demo", parents=[_host_options()], help="edit a few facts of the embedded SmolLM2",
                               description=demo_command.__doc__.splitlines()[0])
    demo_command.add_arguments(demo)
    compare = commands.add_parser(
        "compare", parents=[_host_options()], help="lifelong benchmark of several editors (the default command)",
        description=compare_command.__doc__.split("\n\n")[0], epilog=compare_command.REAL_DATA_HINT,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    compare_command.add_arguments(compare)
    commands.add_parser("info", parents=[_host_options()], help="the EasyEdit in use and the registered editors",
                        description=info.__doc__)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit status (2 for bad input, with a message naming the fix)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["compare", *argv]  # options alone (or nothing) run compare, whatever values they carry
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from wise_plugin.core.requests import EditRequestError
    from wise_plugin.hparams import HParamsError
    from wise_plugin.host import HostImportError, select_host
    from wise_plugin.runner.errors import RunnerInputError

    handlers: dict[str, Callable[[argparse.Namespace, Sequence[str]], Any]] = {
        "demo": demo_command.run, "compare": compare_command.run, "info": info}
    try:
        if args.easyedit:
            select_host(args.easyedit)
        handlers[args.command](args, argv)
    except (RunnerInputError, HParamsError, HostImportError, EditRequestError) as error:
        print(f"wise-plugin {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
