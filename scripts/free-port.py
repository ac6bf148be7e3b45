#!/usr/bin/env python3
"""Print free TCP ports on the loopback interface, one per line.

Usage: free-port.py [COUNT] [--offset N]

COUNT (default 1) distinct ports are printed.  With --offset N every printed
port P also has P+N free (Redis Cluster needs its bus port at P+10000).
A port is "free" if it can be bound right now on 127.0.0.1; all sockets are
held open until every port is chosen, so the ports are distinct, then closed.
There is an unavoidable race between closing and the server binding it.
"""
import argparse
import random
import socket
import sys


def try_bind(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("count", nargs="?", type=int, default=1)
    ap.add_argument("--offset", type=int, default=0,
                    help="also require PORT+OFFSET to be free")
    args = ap.parse_args()

    held = []
    ports = []
    try:
        if args.offset == 0:
            for _ in range(args.count):
                s = try_bind(0)
                if s is None:
                    sys.exit("free-port: cannot bind an ephemeral port")
                held.append(s)
                ports.append(s.getsockname()[1])
        else:
            # Pick from a range where PORT+OFFSET stays valid and, ideally,
            # below the kernel's ephemeral range (32768+ on Linux).
            hi = min(65535 - args.offset, 32767)
            lo = 10000 if hi > 10000 else 1024
            candidates = list(range(lo, hi + 1))
            random.shuffle(candidates)
            for port in candidates:
                if len(ports) == args.count:
                    break
                if port in ports or port + args.offset in ports:
                    continue
                a = try_bind(port)
                if a is None:
                    continue
                b = try_bind(port + args.offset)
                if b is None:
                    a.close()
                    continue
                held += [a, b]
                ports.append(port)
            if len(ports) < args.count:
                sys.exit("free-port: not enough free ports")
    finally:
        for s in held:
            s.close()
    print("\n".join(str(p) for p in ports))


if __name__ == "__main__":
    main()
