# One image for the five services; compose.yaml picks the service with the command (`python -m <service>`).
# Everything is installed from the lock files in requirements/ (pip --require-hashes: each package pinned and
# checked against its hash); the project is built with the locked build backend and installed without
# dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements/build.txt requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/build.txt
COPY pyproject.toml hatch_build.py README.md ./
COPY proto/ proto/
COPY crypto_mesh/ crypto_mesh/
COPY launcher/ launcher/
COPY auth/ auth/
COPY profile_bff/ profile_bff/
COPY socket_proxy/ socket_proxy/
COPY aggregator/ aggregator/
COPY etl/ etl/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app mesh
COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.txt && rm /tmp/runtime.txt
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
USER mesh
WORKDIR /app
ENV PYTHONUNBUFFERED=1
