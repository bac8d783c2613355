"""crypto-mesh: shared library of the services (settings, logging, runtime, JSON, Binance names),
the embedded backing services, the replay exchange and the ``crypto-mesh`` command."""

__version__ = "0.1.0"
