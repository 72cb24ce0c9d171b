"""Call the simple-test functions on a running grid.

    madrpc broker &
    madrpc worker --script examples/simple-test/scripts/simple.js &
    python examples/simple-test/client.py
"""

from __future__ import annotations

import asyncio
import sys

from madrpc import AsyncClient, Client, JSError, RpcError


def main(endpoint: str = "tcp://127.0.0.1:5555") -> None:
    with Client(endpoint, timeout=10) as client:
        print("echo           ->", client.call("echo", ["hello"]))
        print("add            ->", client.call("add", [2, 3]))
        print("greet          ->", client.call("greet", {"name": "Ada"}))
        print("slow_square    ->", client.call("slow_square", [7]))
        print("map add        ->", client.map("add", [[i, i] for i in range(5)]))
        print("sum_of_squares ->", client.call("sum_of_squares", [10]))
        try:
            client.call("fail", ["on purpose"])
        except JSError as error:
            print("fail           ->", error.name, "-", error.data["message"])
        try:
            client.call("no_such_function")
        except RpcError as error:
            print("unknown method ->", error.code, error.message)

    async def concurrently() -> list[int]:
        async with AsyncClient(endpoint, timeout=10) as client:
            return await asyncio.gather(*(client.call("slow_square", [i]) for i in range(8)))

    print("async gather   ->", asyncio.run(concurrently()))


if __name__ == "__main__":
    main(*sys.argv[1:])
