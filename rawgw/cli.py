"""Command line only: parse arguments, call into the package (SPEC 2)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from rawgw import __version__
from rawgw.logsetup import setup_logging
from rawgw.presets import PRESETS

LOG_LEVELS = ("debug", "info", "warning", "error")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rawgw", description="A strict HTTP/1.1 gateway for LLM APIs.")
    p.add_argument("--version", action="version", version=f"rawgw {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("-c", "--config", help="config file (default: $RAWGW_CONFIG, else ./gateway.toml)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int)
    s.add_argument("--log-level", choices=LOG_LEVELS, default="info")

    d = sub.add_parser("demo", help="run a gateway in front of a built-in mock upstream (offline, no keys)")
    d.add_argument("--port", type=int, default=0)
    d.add_argument("--once", action="store_true", help="send one plain and one streaming completion, print them, exit")
    d.add_argument("--log-level", choices=LOG_LEVELS, default="warning")

    i = sub.add_parser("init", help="write a starter config")
    i.add_argument("path", nargs="?", default="gateway.toml")
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    i.add_argument("--provider", choices=list(PRESETS), default="openrouter", help="the provider preset to write (default openrouter)")

    c = sub.add_parser("check", help="validate a config and print a summary")
    c.add_argument("-c", "--config")

    im = sub.add_parser("import", help="convert other gateways' configs into gateway.toml")
    im.add_argument("files", nargs="+")
    im.add_argument("-o", "--output")

    svc = sub.add_parser("install-service", help="print (or write) a systemd unit for this interpreter and config")
    svc.add_argument("-c", "--config", help="config the service runs (default: $RAWGW_CONFIG, else ./gateway.toml); made absolute")
    svc.add_argument("--user", default="rawgw", help="the service's user name (DynamicUser unless it exists; default rawgw)")
    svc.add_argument("--write", metavar="PATH", help="write the unit to PATH (a directory gets rawgw.service) instead of stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    """Every command writes to stdout; a reader that stops early (`rawgw check | head -1`)
    ends the command quietly, as it ends `cat`: no traceback, the shell's 141."""
    try:
        try:
            code = _dispatch(argv)
        except SystemExit as exc:  # argparse after --help, --version or a usage error
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's own final flush would fail again and print "Exception ignored":
        # point stdout at /dev/null first (the Python docs' recipe, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # what a shell shows for a command SIGPIPE ended
    return code


def _dispatch(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "demo":
        from rawgw.demo import run_demo

        setup_logging(args.log_level)
        return run_demo(args.port, args.once)
    return _one_shot(args)


def _one_shot(args: argparse.Namespace) -> int:
    if args.command == "init":
        from rawgw.config_commands import cmd_init

        return cmd_init(args.path, args.force, args.provider)
    if args.command == "check":
        from rawgw.config_commands import cmd_check

        return cmd_check(args.config)
    if args.command == "import":
        from rawgw.config_commands import cmd_import

        return cmd_import(args.files, args.output)
    if args.command == "install-service":
        from rawgw.deploy import cmd_install_service

        return cmd_install_service(args.config, args.user, args.write)
    _parser().print_help()
    return 2


def cmd_serve(args: argparse.Namespace) -> int:
    from rawgw.config import ConfigError, find_config_path
    from rawgw.configfile import load_config

    path = find_config_path(args.config)
    if path is None:
        print(
            "rawgw: no config found (-c PATH, $RAWGW_CONFIG or ./gateway.toml); create one with `rawgw init` or try `rawgw demo`",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    host = args.host if args.host is not None else config.server.host
    port = args.port if args.port is not None else config.server.port
    workers = args.workers if args.workers is not None else config.server.workers
    from rawgw.listen import ListenError, announce_listening

    try:
        if workers > 1:
            from rawgw.workers import run_workers

            # no setup_logging here: the supervisor must not start a log thread
            return run_workers(config, path, host, port, workers, args.log_level)
        from rawgw.serve import install_event_loop_policy, serve_forever

        setup_logging(args.log_level)
        install_event_loop_policy()

        def announce(server: object) -> None:
            announce_listening(server.url)  # type: ignore[attr-defined]

        return asyncio.run(serve_forever(config, path, host, port, announce=announce))
    except ListenError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
