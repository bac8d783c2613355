"""What several test modules share, imported as ``support.<module>`` (tests/ is on ``sys.path``):

- :mod:`support.databases`: new PostgreSQL databases and SQL run on them;
- :mod:`support.fake_aggregator`: the one stand-in for the aggregator's control API;
- :mod:`support.bff`: the one BFF client, and the prices and symbols a BFF test works with;
- :mod:`support.stacks`: services started for a test (auth, BFF, a real aggregator, replay exchange and
  socket_proxy);
- :mod:`support.etl`: the ETL's SQL and health routes.

Fixtures stay in tests/conftest.py (engines, the Redis database of each module); a test module never imports
another test module.
"""
