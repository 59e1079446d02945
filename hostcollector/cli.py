"""Command line: run | check-config | dump | metrics-table | top."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import orjson

from hostcollector import __version__
from hostcollector.config import Config, load_config
from hostcollector.errors import ConfigError

DEFAULT_CONFIG = "/etc/hostcollector/hostcollector.yml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostcollector", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hostcollector {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument(
        "--config",
        default=None,
        help=f"config file (default {DEFAULT_CONFIG} if present, else built-in defaults)",
    )

    check = commands.add_parser(
        "check-config", help="validate a config file; exit 1 listing every problem"
    )
    check.add_argument("file")

    dump = commands.add_parser("dump", help="one collection printed as JSON")
    dump.add_argument("--config", default=None)
    dump.add_argument("--raw", action="store_true", help="what each source received, for fixtures")
    dump.add_argument("--output", "-o", default="-", help="file to write (default stdout)")

    commands.add_parser("metrics-table", help="print the metric table (Markdown) for the README")

    top = commands.add_parser("top", help="live view of a host's VMs and tenants (its JSON API)")
    top.add_argument(
        "--url", default="http://127.0.0.1:9730", help="the daemon (default %(default)s)"
    )
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    top.add_argument("--token-file", help="file holding a bearer token")
    top.add_argument("--ca-file", help="CA bundle to verify an https URL (default: the system's)")
    top.add_argument("--cert", help="client certificate (PEM), with --key")
    top.add_argument("--key", help="the client certificate's private key (PEM)")
    top.add_argument(
        "--sort", default="cpu", choices=("cpu", "mem", "disk", "net", "gpu", "vf", "name")
    )
    top.add_argument("--tenants", action="store_true", help="start in the per-tenant view")
    top.add_argument(
        "--once", action="store_true", help="print one frame (two fetches, --interval apart)"
    )

    args = parser.parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "top":
        from hostcollector.top import screen as top_command

        return top_command.run(
            url=args.url,
            interval=args.interval,
            token_file=args.token_file,
            ca_file=args.ca_file,
            cert=args.cert,
            key=args.key,
            sort=args.sort,
            tenants=args.tenants,
            once_only=args.once,
        )
    if args.command == "metrics-table":
        from hostcollector.exposition import metrics_table

        sys.stdout.write(metrics_table())
        return 0
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    if args.command == "run":
        return _run(config)
    return _dump(config, raw=args.raw, output=args.output)


def _load(path: str | None) -> Config:
    if path is None:
        path = DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None
    return load_config(path) if path else Config()


def _check_config(path: str) -> int:
    try:
        load_config(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.logging.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run(config: Config) -> int:
    from aiohttp import web

    from hostcollector.app import build_app, tune_gc
    from hostcollector.collector import Collector

    _setup_logging(config)
    collector = Collector(config)
    ssl_context = None
    if config.listen.tls.enabled:
        from hostcollector.tls import ReloadingServerTls

        try:
            server_tls = ReloadingServerTls(config.listen.tls)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return 2
        ssl_context = server_tls.context
        collector.watched_files["tls"] = server_tls.files
        collector.tls_not_after = lambda: server_tls.not_after
    tune_gc()
    logging.getLogger("hostcollector").info(
        "hostcollector %s listening on %s://%s:%d/metrics, sources: %s, tokens: %s",
        __version__,
        "https" if ssl_context else "http",
        config.listen.address,
        config.listen.port,
        ", ".join(collector.sources) or "none",
        "required" if config.auth.tokens_file else "off",
    )
    web.run_app(
        build_app(config, collector),
        host=config.listen.address,
        port=config.listen.port,
        ssl_context=ssl_context,
        print=None,
        access_log=None,
    )
    return 0


def _dump(config: Config, *, raw: bool, output: str) -> int:
    from hostcollector.collector import Collector

    _setup_logging(config)

    async def once() -> Any:
        collector = Collector(config, record_raw=raw)
        try:
            await collector.poll_all_once()
        finally:
            await collector.stop()
        if raw:
            return {
                name: getattr(collector.latest.get(name), "raw", None) for name in collector.sources
            } | {"sources": collector.build_snapshot().sources}
        return collector.build_snapshot()

    data = orjson.dumps(asyncio.run(once()), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    if output == "-":
        sys.stdout.buffer.write(data + b"\n")
    else:
        Path(output).write_bytes(data + b"\n")
    return 0
