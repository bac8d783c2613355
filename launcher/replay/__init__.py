"""The replay exchange: a websocket server speaking Binance's spot stream protocol that plays recorded frames.

``python -m launcher.replay`` serves the recordings named by ``REPLAY_FILES`` (see :mod:`.settings`), each
looping forever on its own timeline with timestamps shifted to the present. Pointing socket_proxy at it instead
of ``wss://stream.binance.com:9443`` lets the whole mesh run offline on real recorded trades.
"""
