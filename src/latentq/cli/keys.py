"""``latentq keys create | list | revoke``: tenants' API keys, kept (hashed) in the deployment's Redis."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable

__all__ = ["add_keys_parser", "cmd_keys"]


def add_keys_parser(sub: argparse._SubParsersAction, add_redis: Callable[[argparse.ArgumentParser], None]) -> None:
    keys = sub.add_parser("keys", help="tenants' API keys: create, list, revoke (stored hashed in Redis)")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key for a tenant (made if new) and print it once")
    create.add_argument("name", help="the tenant: 1-64 letters, digits, '.', '_' or '-'")
    create.add_argument("--max-queued", type=int, help="most jobs the tenant may have queued (default: no limit)")
    create.add_argument("--rate", help="most submits per second, e.g. 5/s or 300/min (default: no limit)")
    add_redis(create)
    listing = actions.add_parser("list", help="every key (its prefix, never the key) with its tenant's limits")
    add_redis(listing)
    revoke = actions.add_parser("revoke", help="revoke a key (the key or its listed prefix) or all of a tenant's")
    revoke.add_argument("what", help="a key, a key prefix from `keys list`, or a tenant name")
    add_redis(revoke)


def cmd_keys(args: argparse.Namespace) -> int:
    from ..config import Settings
    from ..state.connection import redis_from_url
    from ..state.tenants import TenantDirectory, parse_rate

    settings = Settings.from_env()
    connection = redis_from_url(settings.redis_url)
    directory = TenantDirectory(connection)
    try:
        if args.keys_command == "create":
            rate = parse_rate(args.rate) if args.rate is not None else None
            key = directory.create_key(args.name, max_queued=args.max_queued, rate=rate)
            tenant = directory.tenant(args.name)
            print(key)
            limits = f"max queued {tenant.max_queued or 'unlimited'}, rate {f'{tenant.rate:g}/s' if tenant.rate else 'unlimited'}"
            print(f"tenant {tenant.name} ({limits}); the key is shown only now", flush=True)
            return 0
        if args.keys_command == "list":
            tenants = directory.tenants()
            stored = directory.keys()
            if not stored:
                print("no keys in Redis (keys in LATENTQ_API_KEYS are not listed)")
            for key in stored:
                tenant = tenants.get(key.tenant)
                created = datetime.datetime.fromtimestamp(key.created, datetime.UTC).strftime("%Y-%m-%d %H:%M")
                limits = ""
                if tenant is not None:
                    limits = f"max queued {tenant.max_queued or '-'}, rate {f'{tenant.rate:g}/s' if tenant.rate else '-'}"
                print(f"{key.prefix}  {key.tenant:<20} created {created} UTC  {limits}")
            return 0
        revoked = directory.revoke(args.what)
        if not revoked:
            print(f"no key matches {args.what!r}")
            return 1
        for key in revoked:
            print(f"revoked {key.prefix} of tenant {key.tenant}")
        return 0
    finally:
        connection.close()
