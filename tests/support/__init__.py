"""What several test modules share, imported as ``support.<module>`` (tests/ is on ``sys.path``):

- :mod:`support.databases`: new PostgreSQL databases and SQL run on them;
- :mod:`support.fake_aggregator`: the one stand-in for the aggregator's control API;
- :mod:`support.bff`: the one BFF client, and the prices and symbols a BFF test works with;
- :mod:`support.exchange_info`: exchangeInfo documents (the shipped snapshot with symbols added or their
  status changed) and files replaced the way the replay exchange notices;
- :mod:`support.stacks`: services started for a test (auth, BFF, a real aggregator, an ETL, replay exchange
  and socket_proxy);
- :mod:`support.etl`: the ETL's SQL, read API and health routes, and SecondStats loaded into its ClickHouse;
- :mod:`support.market`: reference computations of market history (the recordings' trades, candles,
  indicators), written apart from the code under test;
- :mod:`support.credentials`: the tests' service tokens, Redis ACL users and mesh identities;
- :mod:`support.polling`: ``eventually()``, waiting for a condition instead of for a time;
- :mod:`support.kafka_helpers`: reading and writing test records on the Kafka-protocol broker.

Tests live in ``tests/unit/`` (pure decisions and helpers, no engine, no socket) and ``tests/integration/``
(real engines and services over real connections).

Fixtures stay in tests/conftest.py (engines, the Redis database of each module); a test module never imports
another test module.
"""
