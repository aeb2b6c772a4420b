#!/usr/bin/env python3
"""Misbehaving shadows for the mirror benchmarks.

  slow       reads each HTTP/1.1 request in full and answers 200 after --delay
             seconds (keep-alive, requests on one connection in order)
  blackhole  accepts connections and never reads from or writes to them

Prints "shadow MODE listening on HOST:PORT" once bound. Runs until killed.
Not a general HTTP server: it understands Content-Length and chunked bodies,
which is all a proxy sends, and closes the connection on anything else.
"""
import argparse
import asyncio
import resource
import sys

RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
            b"content-length: 7\r\n\r\nshadow\n")
MAX_HEAD = 64 * 1024


def split_addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def read_chunked(reader):
    """Consumes a chunked body and its trailers."""
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        await reader.readexactly(size + 2)
    while (await reader.readuntil(b"\r\n")) != b"\r\n":
        pass


async def read_request(reader):
    """Reads one request; returns False on a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    if len(head) > MAX_HEAD:
        raise ValueError("request head too large")
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        await read_chunked(reader)
    elif length:
        await reader.readexactly(length)
    return True


def make_slow(delay):
    async def serve(reader, writer):
        try:
            while await read_request(reader):
                await asyncio.sleep(delay)
                writer.write(RESPONSE)
                await writer.drain()
        except (ValueError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
    return serve


HELD = set()


async def blackhole(reader, writer):
    # Keep a reference so the transport is never garbage-collected and
    # closed: the peer must see an open connection that never answers.
    HELD.add(writer)
    await asyncio.Event().wait()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("slow", "blackhole"), required=True)
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--delay", type=float, default=0.2, help="seconds (slow)")
    args = ap.parse_args()

    # A black hole holds every connection a proxy opens; let it hold many.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    handler = blackhole if args.mode == "blackhole" else make_slow(args.delay)
    host, port = split_addr(args.listen)
    server = await asyncio.start_server(handler, host, port, backlog=4096,
                                        limit=MAX_HEAD)
    bound = server.sockets[0].getsockname()
    print(f"shadow {args.mode} listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
