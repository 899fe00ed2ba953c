"""Tests for gateway/config/models.py: the [broker] section's node list and its validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config.models import BrokerSection

NODE_A = "amqp://gw:secret-a@rabbit-a.example:5672/customs"
NODE_B = "amqps://gw:secret-b@rabbit-b.example:5671/customs"


def test_one_url_is_a_list_of_one_node() -> None:
    """A single URL, as before, gives ``urls`` with that URL alone."""
    section = BrokerSection(url=NODE_A)
    assert section.url == NODE_A
    assert section.urls == (NODE_A,)


def test_a_list_keeps_the_nodes_in_their_order() -> None:
    """A TOML array of URLs gives the nodes in the order written."""
    section = BrokerSection.model_validate({"url": [NODE_B, NODE_A]})
    assert section.urls == (NODE_B, NODE_A)


def test_the_default_is_the_local_broker() -> None:
    """Without a [broker] url the gateway uses the local RabbitMQ, one node."""
    assert BrokerSection().urls == ("amqp://guest:guest@127.0.0.1:5672/",)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ([], "empty"),
        (["http://gw:secret-x@rabbit.example/"], "node 1"),
        ([NODE_A, "rabbit-b.example:5672"], "node 2"),
        ("redis://gw:secret-x@rabbit.example/", "node 1"),
    ],
)
def test_a_bad_node_list_is_refused_without_showing_a_password(
    url: str | list[str], expected: str
) -> None:
    """An empty list or a URL that is not amqp:// or amqps:// is refused, naming the node by position only."""
    with pytest.raises(ValidationError) as err:
        BrokerSection.model_validate({"url": url})
    text = str(err.value)
    assert expected in text
    assert "secret" not in text.split("input_value")[0]


def test_the_backoff_range_must_be_ordered() -> None:
    """A maximum pause below the minimum is refused."""
    with pytest.raises(ValidationError, match="reconnect_max_seconds"):
        BrokerSection(reconnect_min_seconds=10, reconnect_max_seconds=5)
