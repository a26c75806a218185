"""The ``etx`` command line: one subcommand per job, each in the module that owns it.

Subcommand modules are imported only when their command runs, so ``etx --help`` stays
fast and one broken optional dependency does not take every command down. Each module
named in COMMANDS defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tools.demo", "run a short exchange day with simulated members and show the results"),
    "init": ("tools.init", "make a new exchange's folder: configuration with fresh secrets, credentials, data"),
    "serve": ("gateway.serve", "run the exchange service (engine, settlement, gateway) from a config file"),
    "load": ("benchmarks.load", "load-test a running exchange over TCP"),
    "replay": ("tools.replay", "replay an order stream or a LOBSTER file through the engine"),
    "registry": ("tools.registry", "registry accounts, balances, history, operations and audit"),
    "journal": ("tools.journal", "verify, inspect and summarise a journal"),
    "console": ("console.app", "the market operator's console in the browser (a web application)"),
    "ops": ("terminal.ops", "the market operator's actions and views in the terminal"),
    "watch": ("terminal.watch", "one instrument live in the terminal: ladder, trades, statistics"),
    "trader": ("terminal.trader", "a trading member's terminal: book, orders, fills, balances, order entry"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="etx", description="etx: an exchange for emission allowances")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help or the error for an unknown command
        parser.print_help()
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    command = argparse.ArgumentParser(prog=f"etx {name}", description=COMMANDS[name][1])
    module.add_arguments(command)
    args = command.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
