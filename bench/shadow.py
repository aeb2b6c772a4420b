#!/usr/bin/env python3
"""A black-hole shadow for the mirror benchmarks.

  blackhole  accepts connections and never reads from or writes to them

(The slow shadow is `umbra collect --delay`: see start_umbra_collect in
bench.py.) Prints "shadow MODE listening on HOST:PORT" once bound. Runs until
killed.
"""
import argparse
import asyncio
import resource
import sys


def split_addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


HELD = set()


async def blackhole(reader, writer):
    # Keep a reference so the transport is never garbage-collected and
    # closed: the peer must see an open connection that never answers.
    HELD.add(writer)
    await asyncio.Event().wait()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("blackhole",), required=True)
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    args = ap.parse_args()

    # A black hole holds every connection a proxy opens; let it hold many.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    host, port = split_addr(args.listen)
    server = await asyncio.start_server(blackhole, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()
    print(f"shadow {args.mode} listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
