"""The broker transport on a real redis-server: Celery uses ours, and its channels share one client."""

from __future__ import annotations

import pytest
import redis

from common.broker import Channel, Transport
from common.queue import INTERACTIVE_QUEUE, make_celery
from common.settings import Settings


def test_celery_connects_through_our_transport_and_reuses_one_client(settings: Settings) -> None:
    with make_celery(settings).connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.ping()
        # A replaced pool (kombu replaces it after a fork) gets a client of its own.
        channel._disconnect_pools()
        second = channel._create_client()
        assert second is not first and second.connection_pool is channel.pool and second.ping()
        assert channel._create_client(asynchronous=True) is not second


def test_messages_still_flow_through_it(settings: Settings) -> None:
    app = make_celery(settings)
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(f"{INTERACTIVE_QUEUE}.broker-test")
        queue.put({"hello": "world"})
        message = queue.get(timeout=5)
        assert message.payload == {"hello": "world"}
        message.ack()
        queue.close()


def test_a_channel_whose_connection_was_detached_acks_through_its_old_client(settings: Settings) -> None:
    """Celery, losing the broker, detaches a connection before closing its channel (kombu 5.7.0, Celery 5.7.0): the
    close and the acks of tasks still running must not stop the worker with an AttributeError."""
    app = make_celery(settings)
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(f"{INTERACTIVE_QUEUE}.detach-test")
        queue.put({"hello": "world"})
        message = queue.get(timeout=5)
        channel = message.channel
        client = channel._create_client()
        transport_client, channel.connection.client = channel.connection.client, None  # what Celery's collect() does
        channel._disconnect_pools()  # then closing the channel: its pools go before it restores what it delivered
        try:
            assert channel._create_client() is client
            message.ack()  # through the old pool, which reconnects
            assert not client.hexists(channel.unacked_key, message.delivery_tag)
            channel._shared_client = None
            with pytest.raises(redis.exceptions.ConnectionError):  # a lost broker's error: Celery carries on
                channel._create_client()
        finally:
            channel.connection.client = transport_client
        queue.close()
