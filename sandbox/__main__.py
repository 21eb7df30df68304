"""``python -m sandbox``: run the Salesforce, WHMCS and Freebit sandboxes in the foreground.

Ports and the webhook URL come from the command line (``fleet sandbox up`` passes them from
Settings); the webhook signing secret comes from ``SANDBOX_WHMCS_WEBHOOK_SECRET`` so it never
shows in a process listing. SIGINT/SIGTERM stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from sandbox.runner import run_sandboxes
from sandbox.whmcs import DEFAULT_WEBHOOK_SECRET

SECRET_ENV = "SANDBOX_WHMCS_WEBHOOK_SECRET"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--salesforce-port", type=int, default=18081)
    parser.add_argument("--whmcs-port", type=int, default=18082)
    parser.add_argument("--freebit-port", type=int, default=18083)
    parser.add_argument(
        "--salesforce-pubsub-port", type=int, default=18084, help="the Salesforce Pub/Sub API (gRPC); 0 = a free port"
    )
    parser.add_argument("--webhook-url", default=None, help="where the WHMCS sandbox POSTs signed webhooks")
    parser.add_argument("--freebit-activation-delay", type=float, default=2.0, help="seconds pending → active")
    parser.add_argument("--freebit-auth-ttl", type=float, default=600.0, help="authKey lifetime in seconds")
    parser.add_argument("--ready-file", type=Path, default=None, help="write {system: port} here once serving")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ports = {
        "salesforce": args.salesforce_port,
        "whmcs": args.whmcs_port,
        "freebit": args.freebit_port,
        "salesforce_pubsub": args.salesforce_pubsub_port,
    }
    await run_sandboxes(
        args.host,
        ports,
        webhook_url=args.webhook_url,
        webhook_secret=os.environ.get(SECRET_ENV) or DEFAULT_WEBHOOK_SECRET,
        stop=stop,
        ready_file=args.ready_file,
        activation_delay_s=args.freebit_activation_delay,
        auth_ttl_s=args.freebit_auth_ttl,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main(parse_args()))
