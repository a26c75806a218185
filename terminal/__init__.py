"""The people's programs in the terminal: ``etx ops`` (the operator's commands),
``etx watch`` (a live instrument) and ``etx trader`` (a dealer's terminal). Clients of the
exchange's gateway, like the console; nothing below imports them."""
