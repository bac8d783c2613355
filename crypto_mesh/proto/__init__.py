"""gRPC stubs generated from the ``.proto`` contracts in ``proto/`` by the build (``hatch_build.py``).

Never edit the generated ``*_pb2*.py`` modules: change ``proto/*.proto`` and reinstall (``pip install -e .``).
"""
