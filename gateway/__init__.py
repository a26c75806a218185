"""etx gateway: the edge and the composition root (wire protocol, sessions, server,
member client, MQTT market data, configuration and the ``etx`` command line)."""
