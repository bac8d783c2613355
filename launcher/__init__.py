"""The launcher: `crypto-mesh up/sql/secrets`, the embedded engines and the replay exchange.

It sits above every service (it may import any of them); no service and nothing in ``crypto_mesh`` imports it.
"""
