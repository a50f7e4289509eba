"""The seeds' Python cache-aside read path, and a driver that measures its
hit throughput at N threads against a given Redis.

`CacheAside.get_or_load` is the seeds' code (redis-py, JSON as the seeds
serialize, `SETEX` on a miss); only the logging was dropped. The driver
warms the key once, then runs N threads that call `get_or_load` on it for a
fixed time, all sharing one `redis.Redis` client (its connection pool is
thread-safe), as a threaded web app would.

Usage: python3 seed_cache.py URL THREADS SECONDS
Prints one JSON line: threads, ops, seconds, ops_per_s, p50_us, p99_us.
"""

import json
import sys
import threading
import time

import redis


class CacheAside:
    """Cache-aside (lazy-loading) wrapper around Redis."""

    def __init__(self, redis_client, default_ttl=300):
        self.redis = redis_client
        self.default_ttl = default_ttl
        self._hits = 0
        self._misses = 0

    def get_or_load(self, key, loader, ttl=None,
                    serialize=json.dumps, deserialize=json.loads):
        """Check cache first; on miss, call loader and populate."""
        try:
            cached = self.redis.get(key)
            if cached is not None:
                self._hits += 1
                return deserialize(cached)
        except redis.RedisError:
            pass

        self._misses += 1
        value = loader()
        if value is not None:
            try:
                self.redis.setex(key, ttl or self.default_ttl, serialize(value))
            except redis.RedisError:
                pass
        return value


def product():
    # The same row the Rust benchmarks cache.
    return {"id": 42, "name": "desk lamp, brass", "price_cents": 4999,
            "tags": ["lighting", "home"]}


def main():
    url, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    client = redis.Redis.from_url(url, max_connections=max(threads, 10))
    cache = CacheAside(client)
    key = "py:product:42"
    client.delete(key)
    assert cache.get_or_load(key, product) == product()
    assert cache.get_or_load(key, product) == product()

    stop = threading.Event()
    start_gate = threading.Barrier(threads + 1)
    latencies = [[] for _ in range(threads)]

    def worker(i):
        lat = latencies[i]
        start_gate.wait()
        while not stop.is_set():
            t = time.perf_counter_ns()
            cache.get_or_load(key, product)
            lat.append(time.perf_counter_ns() - t)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start_gate.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    took = time.perf_counter() - began
    all_lat = sorted(x for lat in latencies for x in lat)
    ops = len(all_lat)
    print(json.dumps({
        "threads": threads,
        "ops": ops,
        "seconds": took,
        "ops_per_s": ops / took,
        "p50_us": all_lat[ops // 2] / 1e3,
        "p99_us": all_lat[min(ops - 1, ops * 99 // 100)] / 1e3,
        "misses": cache._misses,
    }))


if __name__ == "__main__":
    main()
