"""Command line: run | check-config | dump | metrics-table | top | vmauth-config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
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

    vmauth = commands.add_parser(
        "vmauth-config",
        help="vmauth config letting each tenant key read only its own space (holds the keys)",
    )
    vmauth.add_argument("--tenant-tokens", required=True, help="names, tenants and sha256 digests")
    vmauth.add_argument(
        "--secrets-dir", required=True, help="root-only directory: one file per key name"
    )
    vmauth.add_argument("--space-url", help="a tenant's store, {tenant} in the path")
    vmauth.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="TENANT=URL",
        help="this tenant's store (repeatable; wins over --space-url)",
    )
    vmauth.add_argument("--output", "-o", default="-", help="file to write, 0600 (default stdout)")

    args = parser.parse_args(argv)
    if args.command == "vmauth-config":
        return _vmauth_config(args)
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


def _vmauth_config(args: argparse.Namespace) -> int:
    from hostcollector.vmauth import generate, write_private

    try:
        explicit = dict(_tenant_url(value) for value in args.space)
        text = generate(Path(args.tenant_tokens), Path(args.secrets_dir), args.space_url, explicit)
    except (ValueError, OSError) as exc:
        print(f"hostcollector vmauth-config: {exc}; nothing written", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.write(text)
    else:
        write_private(Path(args.output), text)
    return 0


def _tenant_url(value: str) -> tuple[str, str]:
    tenant, equals, url = value.partition("=")
    if not equals or not tenant or not url:
        raise ValueError(f"--space {value!r}: expected TENANT=URL")
    return tenant, url


def _load(path: str | None) -> Config:
    if path is None:
        path = DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None
    return load_config(path) if path else Config()


def _check_config(path: str) -> int:
    """Exit 1 for what `run` refuses to start with: the config, and TLS files the server cannot
    load. What `run` starts with and keeps re-reading (tokens, tenant map, remote-write TLS: a
    file may arrive after the config, or be rewritten) is a warning, exit 0."""
    try:
        config = load_config(path)
        with _quiet_reload_warnings():
            _check_server_tls(config, path)
            warnings = _file_warnings(config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    print(f"{path}: ok")
    if warnings:
        print(
            f"{path}: {len(warnings)} warning(s); the daemon starts, and loads each file once "
            "it is fixed:",
            file=sys.stderr,
        )
        print("\n".join(f"  - {warning}" for warning in warnings), file=sys.stderr)
    return 0


@contextlib.contextmanager
def _quiet_reload_warnings() -> Iterator[None]:
    # The file checks below log what they reject, as in the daemon; here each is reported once,
    # in the list.
    reloading = logging.getLogger("hostcollector.reloading")
    level = reloading.level
    reloading.setLevel(logging.ERROR)
    try:
        yield
    finally:
        reloading.setLevel(level)


def _check_server_tls(config: Config, origin: str) -> None:
    # What `_run` does: it refuses to start when these do not load.
    if config.listen.tls.enabled:
        from hostcollector.tls import ReloadingServerTls

        try:
            ReloadingServerTls(config.listen.tls)
        except ConfigError as exc:
            raise ConfigError(exc.problems, origin=origin) from exc


def _file_warnings(config: Config) -> list[str]:
    """Files the daemon reads the same way at start, survives without (it logs, keeps an empty
    value and loads them when they change), and that would leave it serving or sending
    nothing."""
    from hostcollector.auth import TokenFile
    from hostcollector.remote_write.sender import ClientTls, Retry
    from hostcollector.tenant_map import TenantMapFile

    found = []
    if config.auth.tokens_file is not None:
        tokens = TokenFile(config.auth.tokens_file)
        tokens.current()
        if tokens.last_error is not None:
            found.append(f"auth.tokens_file: {tokens.last_error}; every request is refused")
    if config.attribution.mapping_file is not None:
        tenant_map = TenantMapFile(config.attribution.mapping_file)
        tenant_map.current()
        if tenant_map.last_error is not None:
            found.append(f"attribution.mapping_file: {tenant_map.last_error}")
    for i, endpoint in enumerate(config.remote_write.endpoints):
        if not endpoint.url.startswith("https://"):
            continue  # the sender uses no TLS, so reads none of its files
        try:
            ClientTls(endpoint).context()
        except (Retry, OSError, ValueError) as exc:
            found.append(f"remote_write.endpoints[{i}].tls: {exc}; nothing is sent")
    return found


def _setup_logging(config: Config) -> None:
    from hostcollector.logs import setup_logging

    setup_logging(config.logging.level, config.logging.format)


def _run(config: Config) -> int:
    from hostcollector.app import build_app, tune_gc
    from hostcollector.sd_notify import Notifier
    from hostcollector.server import (
        ConnectionGuard,
        ListenError,
        connection_limit,
        serve_until_stopped,
    )
    from hostcollector.supervision import Supervision
    from hostcollector.wiring import build_collector

    _setup_logging(config)
    log = logging.getLogger("hostcollector")
    collector = build_collector(config)
    ssl_context = None
    server_tls = None
    if config.listen.tls.enabled:
        from hostcollector.tls import ReloadingServerTls

        try:
            server_tls = ReloadingServerTls(config.listen.tls)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return 2
        ssl_context = server_tls.context
    guard = ConnectionGuard(connection_limit(config.listen.max_connections))
    app = build_app(config, collector, server_tls=server_tls, guard=guard)
    # After build_app's polling context: started after the polls, stopped before them.
    supervision = Supervision(collector, Notifier())
    app.cleanup_ctx.append(supervision.context)
    tune_gc()

    def started(url: str) -> None:
        log.info(
            "hostcollector %s listening on %s/metrics, sources: %s, tokens: %s",
            __version__,
            url,
            ", ".join(collector.sources) or "none",
            "required" if config.auth.tokens_file else "off",
        )
        supervision.listening(url)

    try:
        asyncio.run(
            serve_until_stopped(
                app,
                config.listen,
                ssl_context=ssl_context,
                guard=guard,
                started=started,
            )
        )
    except ListenError as exc:
        print(f"hostcollector: {exc}", file=sys.stderr)
        return 2
    return 0


def _dump(config: Config, *, raw: bool, output: str) -> int:
    from hostcollector.sources import DECLARED
    from hostcollector.wiring import build_collector

    _setup_logging(config)

    async def once() -> Any:
        collector = build_collector(config, record_raw=raw)
        try:
            await collector.poll_all_once()
        finally:
            await collector.stop()
        if raw:
            latest = {name: DECLARED[name].latest(collector.latest) for name in collector.sources}
            return {name: result.raw if result else None for name, result in latest.items()} | {
                "sources": collector.build_snapshot().sources
            }
        return collector.build_snapshot()

    data = orjson.dumps(asyncio.run(once()), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    if output == "-":
        sys.stdout.buffer.write(data + b"\n")
    else:
        Path(output).write_bytes(data + b"\n")
    return 0
