"""``python -m bench.chaos [--seed N] [--smoke] [--out PATH]``: one chaos run and its report (see ``bench.chaos``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from bench.chaos.config import ROOT, ChaosConfig
from bench.chaos.run import run


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=None, help="default: from the clock (printed, and in the report)")
    p.add_argument("--smoke", action="store_true", help="the short run of `make test` (about 2 minutes)")
    p.add_argument("--out", type=Path, default=None, help="default: bench/results/chaos.json (smoke: none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    config = ChaosConfig.smoke(seed) if args.smoke else ChaosConfig.full(seed)
    out = args.out if args.out is not None else (None if args.smoke else ROOT / "bench" / "results" / "chaos.json")
    report = asyncio.run(run(config, lambda line: print(line, flush=True)))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"written to {out}", flush=True)
    zeros = report.get("check", {}).get("zeros", {})
    print(json.dumps({"seed": seed, "zeros": zeros}, indent=2))
    return 0 if zeros and not any(zeros.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
