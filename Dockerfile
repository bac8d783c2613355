# One image for the five services; compose.yaml picks the service with the command (`python -m <service>`).
#
# Two stages. The build stage makes a virtual environment, /opt/venv, from requirements/runtime.txt only
# (pip --require-hashes: each package pinned and checked against its hash; the `embedded` extra's engines, for
# `crypto-mesh up`, are not in it), builds the project's wheel with the locked build backend
# (requirements/build.txt) and installs it into the venv without dependencies. The final stage copies that venv
# and nothing else: no wheel, pip cache, build backend, compiler or source tree is in any of its layers, and
# the venv has no pip of its own. The services run as an unprivileged user.
#
# The base image is pinned to a full version. To pin it to a digest as well (reproducible to the byte):
#   docker buildx imagetools inspect python:3.11.17-slim   # prints "Digest: sha256:..."
# and write both stages' FROM as python:3.11.17-slim@sha256:<digest> (the build stage and the final
# stage must stay on the same image: the venv links to its interpreter).
ARG PYTHON_IMAGE=python:3.11.17-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/build.txt requirements/runtime.txt requirements/
# The build backend goes into the build stage's own interpreter, never into the venv.
RUN pip install --require-hashes -r requirements/build.txt
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml hatch_build.py README.md ./
COPY proto/ proto/
COPY crypto_mesh/ crypto_mesh/
COPY launcher/ launcher/
COPY auth/ auth/
COPY profile_bff/ profile_bff/
COPY socket_proxy/ socket_proxy/
COPY aggregator/ aggregator/
COPY etl/ etl/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && pip --python /opt/venv/bin/python install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 mesh \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mesh
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
