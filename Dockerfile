# One image for the five services; compose.yaml picks the service with the command (`python -m <service>`).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml hatch_build.py README.md ./
COPY proto/ proto/
COPY crypto_mesh/ crypto_mesh/
COPY auth/ auth/
COPY profile_bff/ profile_bff/
COPY socket_proxy/ socket_proxy/
COPY aggregator/ aggregator/
COPY etl/ etl/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app mesh
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER mesh
WORKDIR /app
ENV PYTHONUNBUFFERED=1
