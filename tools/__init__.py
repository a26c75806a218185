"""etx's tools: the ``etx`` command line (``tools.cli``), the demo, order-stream replay,
the journal and registry commands and the registry audit. They drive the exchange
through its service (``gateway.serve``) and its wire (``gateway.client``); nothing below
imports them."""
