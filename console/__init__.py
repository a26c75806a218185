"""The market operator's console: a web application (``etx console``, ``console.app``)
that is one more client of the exchange's gateway. It imports the gateway; nothing in
the gateway, the service or below imports it."""
