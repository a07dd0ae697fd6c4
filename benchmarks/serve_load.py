"""Load generator of the serving benchmark: a bursty arrival trace replayed open-loop against a server, in its own
process (``bench_serve.py`` starts it).

The trace (``make_trace``): Poisson arrivals at a base rate, with bursts at ``burst_factor`` x that rate for
``burst_s`` seconds every ``burst_every_s`` seconds (the first after one period); fixed seed. Each request is sent
at its arrival time whether or not earlier ones have been answered (open loop: a slow server does not slow the
arrivals down), and its outcome is written as one JSON line: scheduled and actual send time, status, client
latency, and the server's answer fields (operating point, batch, queue and compute time).

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --trace trace.json --bodies bodies.jsonl --out log.jsonl
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np


def make_trace(seed: int, duration_s: float, base_rate: float, burst_factor: float, burst_every_s: float,
               burst_s: float, max_requests: int) -> list[float]:
    """Arrival times (s, ascending) of a Poisson process whose rate is ``base_rate``, times ``burst_factor`` inside
    the burst windows [k * burst_every_s, k * burst_every_s + burst_s), k >= 1; at most ``max_requests``."""
    if not (base_rate > 0 and burst_factor >= 1 and burst_every_s > burst_s > 0 and duration_s > 0):
        raise ValueError("need base_rate > 0, burst_factor >= 1, burst_every_s > burst_s > 0, duration_s > 0")
    rng = np.random.default_rng(seed)
    peak = base_rate * burst_factor
    arrivals, t = [], 0.0
    while len(arrivals) < max_requests:
        t += rng.exponential(1.0 / peak)  # thinning: candidates at the peak rate, kept with rate(t) / peak
        if t >= duration_s:
            break
        if in_burst(t, burst_every_s, burst_s) or rng.random() < 1.0 / burst_factor:
            arrivals.append(t)
    return arrivals


def in_burst(t: float, burst_every_s: float, burst_s: float) -> bool:
    return t >= burst_every_s and (t % burst_every_s) < burst_s


async def replay(url: str, arrivals: list[float], bodies: list[bytes], timeout_s: float) -> list[dict]:
    """Send ``bodies`` (cycled) at ``arrivals`` (s from now); one record per request."""
    import aiohttp

    records = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def one(i: int, at: float):
            sent = time.perf_counter() - start
            record = {"i": i, "scheduled_s": at, "sent_s": sent}
            try:
                async with session.post(url, data=bodies[i % len(bodies)],
                                        headers={"Content-Type": "application/json"}) as reply:
                    answer = await reply.json(content_type=None)
                    record["status"] = reply.status
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as err:
                answer, record["status"] = {"error": f"{type(err).__name__}: {err}"}, 0
            record["latency_ms"] = (time.perf_counter() - start - sent) * 1e3
            if record["status"] == 200:
                batch = answer.get("batch", {})
                record.update(subnet=answer["subnet"], expected_top1=answer.get("expected_top1"),
                              queue_ms=answer["queue_ms"], compute_ms=answer["compute_ms"],
                              server_ms=answer["server_ms"], batch_id=batch.get("id"), batch_size=batch.get("size"),
                              service_ms=batch.get("service_ms"), predicted_ms=batch.get("predicted_ms"))
            else:
                record["error"] = str(answer.get("error", answer))[:200]
            records.append(record)

        tasks = []
        for i, at in enumerate(arrivals):
            delay = at - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, at)))
        await asyncio.gather(*tasks)
    return sorted(records, key=lambda r: r["i"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server's predict URL")
    parser.add_argument("--trace", required=True, help="JSON file with the arrival times (s): {\"arrivals\": [...]}")
    parser.add_argument("--bodies", required=True, help="JSON lines file: one request body per line (cycled)")
    parser.add_argument("--out", required=True, help="JSON lines file of the request records")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="client timeout of one request")
    args = parser.parse_args(argv)
    with open(args.trace) as handle:
        arrivals = json.load(handle)["arrivals"]
    with open(args.bodies, "rb") as handle:
        bodies = [line.rstrip(b"\n") for line in handle if line.strip()]
    records = asyncio.run(replay(args.url, arrivals, bodies, args.timeout_s))
    with open(args.out, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
