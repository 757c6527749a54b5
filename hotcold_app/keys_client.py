"""``hotcold key``: a client of a router's admin API for API keys and tenant limits
(router/admin_tenants.py). A key made on any router of a fleet works on every router within a
second; on a single router it is written into its config file.

    hotcold key new --tenant acme --name thermostats   # prints the key, once
    hotcold key list
    hotcold key revoke 3f9a0c12e4b1
    hotcold key limits acme --requests-per-s 50 --burst 100 --tokens-per-min 200000
    hotcold key limits acme --clear                    # back to each gateway's file
    hotcold key new --tenant acme --offline            # no router: print the config line

``--router`` (``HOTCOLD_ROUTER_URL``) says which router, ``--admin-token``
(``HOTCOLD_ADMIN_TOKEN``) its admin token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_ROUTER = "http://127.0.0.1:8080"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["new", "list", "revoke", "limits"], help="what to do")
    parser.add_argument("target", nargs="?", help="revoke: the key's id; limits: the tenant")
    parser.add_argument("--tenant", help="new: the tenant the key belongs to")
    parser.add_argument("--name", help="new: a label for the key (which devices use it)")
    parser.add_argument(
        "--router",
        default=os.environ.get("HOTCOLD_ROUTER_URL", DEFAULT_ROUTER),
        help="the router's base URL (HOTCOLD_ROUTER_URL)",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("HOTCOLD_ADMIN_TOKEN"),
        help="the router's admin token (HOTCOLD_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="new: ask no router; print the key and the config line to add by hand",
    )
    parser.add_argument("--requests-per-s", type=float, help="limits: requests per second")
    parser.add_argument("--burst", type=int, help="limits: bucket depth")
    parser.add_argument("--tokens-per-min", type=int, help="limits: upstream tokens per minute")
    parser.add_argument("--edge-weight", type=float, help="limits: weight in the edge's share")
    parser.add_argument("--edge-share", type=float, help="limits: most of the edge's slots")
    parser.add_argument("--clear", action="store_true", help="limits: hand back to the file")


class AdminError(RuntimeError):
    pass


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    headers = {"Accept": "application/json"}
    if args.admin_token:
        headers["Authorization"] = f"Bearer {args.admin_token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        args.router.rstrip("/") + path, data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise AdminError(f"{method} {path}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AdminError(f"cannot reach the router at {args.router}: {exc}") from None


def _offline_key(tenant: str, name: str | None) -> int:
    from router.live_keys import make_key

    secret, record = make_key(tenant, name, "file")
    print(f"API key for tenant {tenant} (shown once; the router keeps only its hash):\n  {secret}")
    print("\nadd to the router's config (tenants.api_keys):")
    label = f", name: {name}" if name else ""
    print(f"  - {{tenant: {tenant}, sha256: {record.sha256}{label}}}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except AdminError as exc:
        print(f"hotcold key: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.action == "new":
        if not args.tenant:
            print("hotcold key new: --tenant is required", file=sys.stderr)
            return 2
        if args.offline:
            return _offline_key(args.tenant, args.name)
        body = {"tenant": args.tenant, **({"name": args.name} if args.name else {})}
        made = _call(args, "POST", "/admin/keys", body)
        print(f"API key {made['id']} for tenant {made['tenant']} (shown once):\n  {made['key']}")
        print(f"stored in: {made['source']}; in effect on every router within a second")
        return 0
    if args.action == "list":
        listing = _call(args, "GET", "/admin/keys")
        print(f"{'id':<14} {'tenant':<24} {'source':<8} name")
        for key in listing["keys"]:
            print(f"{key['id']:<14} {key['tenant']:<24} {key['source']:<8} {key['name'] or ''}")
        if listing.get("open_mode"):
            print("(no keys: the router is in open mode, X-Tenant names the tenant)")
        return 0
    if not args.target:
        print(f"hotcold key {args.action}: say which (an id or a tenant)", file=sys.stderr)
        return 2
    if args.action == "revoke":
        revoked = _call(args, "DELETE", f"/admin/keys/{args.target}")["revoked"]
        print(f"revoked {revoked['id']} (tenant {revoked['tenant']}) on every router")
        return 0
    path = f"/admin/tenants/{args.target}/limits"
    if args.clear:
        document = _call(args, "DELETE", path)
    else:
        fields = ("requests_per_s", "burst", "tokens_per_min", "edge_weight", "edge_share")
        limits = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
        document = _call(args, "PUT", path, limits)
    print(json.dumps(document["overrides"].get(args.target, "(file limits)"), indent=2))
    return 0
