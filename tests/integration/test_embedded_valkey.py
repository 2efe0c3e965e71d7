"""The embedded Valkey behind `make run` and the tests: starts on a free port, serves Redis clients, stops."""

from __future__ import annotations

from pathlib import Path

import redis

from libs.devstack.servers import EmbeddedValkey, port_is_free


def test_embedded_valkey_serves_redis_clients_and_stops(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey")
    with server:
        assert server.running
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
            client.set("greeting", "hello", ex=60)
            assert client.get("greeting") == b"hello"
        finally:
            client.close()
        server.start()  # already running: nothing happens
        assert server.running
    assert not server.running
    assert port_is_free(server.port)
    assert not list((tmp_path / "valkey").glob("*.rdb"))  # counters are never saved
