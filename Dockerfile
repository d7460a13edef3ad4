# arrival's container images (README, "Containers"). Targets:
#   serving     the model API, `arrival-serve`: the package with the `serving` dependency group of
#               uv.lock and uvicorn, and nothing of scikit-learn, pandas or MLflow
#   trainer     the whole project: `arrival-worker` by default, also the instance agent of
#               docker-compose.yml
#   mlflow      the trainer image running the MLflow tracking server, for docker-compose.yml
#   localstack  LocalStack with arrival's Lambda executor (no auth token), for docker-compose.yml
# e.g. `docker build --target serving -t arrival-serving .`
#
# Every Python package comes from uv.lock and is checked against its hash. The base images are
# pinned by tag; where a build must be byte-for-byte repeatable, add the digests (python:...@sha256:...).

# The Python of the arrival images and of the Lambda functions (python3.12, template.yaml), and
# LocalStack's, which must be 3.13 (LocalStack 2026.3.0 imports warnings.deprecated, new in 3.13).
FROM python:3.12.12-slim-trixie AS python312
FROM python:3.13.9-slim-trixie AS python313

FROM python312 AS uv
ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.12
RUN python -m pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock ./
# The requirement files each image installs, exported from the lock with hashes: `trainer.txt` is
# the project's own dependencies (no dev group); `serving.txt` is the `serving` group, the same one
# the serving Lambda package is built from (Makefile, build-ServingFunction). The Lambda runs through
# Mangum; the image runs `arrival-serve`, which also needs uvicorn with uvloop and httptools:
# `server.txt` names it at the version the lock pins, and trainer.txt, as constraints, pins and
# hashes what it pulls in.
RUN mkdir /requirements \
    && uv export --frozen --no-default-groups --no-emit-project --format requirements-txt \
        --output-file /requirements/trainer.txt \
    && uv export --frozen --only-group serving --no-emit-project --format requirements-txt \
        --output-file /requirements/serving.txt \
    && sed -n 's/^uvicorn==\([^ ;]*\).*/uvicorn[standard]==\1/p' /requirements/trainer.txt \
        > /requirements/server.txt \
    && test -s /requirements/server.txt

# The project's wheel: what `pip install arrival-*.whl` puts on an AMI (it carries dvc.yaml and
# params.yaml for the trainer).
FROM uv AS build
COPY README.md dvc.yaml params.yaml ./
COPY cli cli
COPY common common
COPY handlers handlers
COPY localcloud localcloud
COPY serving serving
COPY worker worker
RUN uv build --wheel --out-dir /dist

# Dependencies before the wheel, so a change of code reuses the dependency layer.
FROM uv AS serving-venv
RUN --mount=type=cache,target=/root/.cache/uv \
    uv venv /opt/venv \
    && uv pip install --python /opt/venv/bin/python --require-hashes \
        -r /requirements/serving.txt -r /requirements/server.txt -c /requirements/trainer.txt
COPY --from=build /dist /dist
# --no-deps: the modules of the training side are in the wheel but never imported by serving.
RUN uv pip install --python /opt/venv/bin/python --no-deps /dist/*.whl

FROM uv AS trainer-venv
RUN --mount=type=cache,target=/root/.cache/uv \
    uv venv /opt/venv \
    && uv pip install --python /opt/venv/bin/python --require-hashes -r /requirements/trainer.txt
COPY --from=build /dist /dist
RUN uv pip install --python /opt/venv/bin/python --no-deps /dist/*.whl

# LocalStack in a virtualenv of its own, as `arrival up` builds it (localcloud/emulator.py): the
# same version and constraints, and arrival's Lambda executor, installed without its dependencies.
FROM python313 AS localstack-venv
ARG LOCALSTACK_VERSION=2026.3.0
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
COPY --from=uv /usr/local/bin/uv /usr/local/bin/uv
COPY localcloud/localstack-constraints.txt /localstack/constraints.txt
COPY localcloud/lambda_executor /localstack/lambda_executor
RUN --mount=type=cache,target=/root/.cache/uv \
    uv venv --python /usr/local/bin/python3.13 /opt/localstack \
    && uv pip install --python /opt/localstack/bin/python \
        "localstack-core[runtime]==${LOCALSTACK_VERSION}" -c /localstack/constraints.txt \
    && uv pip install --python /opt/localstack/bin/python --no-deps /localstack/lambda_executor

FROM python312 AS serving
RUN useradd --no-log-init --uid 10001 --user-group --create-home --shell /usr/sbin/nologin arrival
COPY --from=serving-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ARRIVAL_SERVING_PORT=8080
# By uid, so that a runtime refusing root (Kubernetes' runAsNonRoot) can check it.
USER 10001:10001
WORKDIR /home/arrival
EXPOSE 8080
# Liveness only, as on EC2: /ready would call the container unhealthy until a champion exists.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ARRIVAL_SERVING_PORT', '8080') + '/health', timeout=2)"]
CMD ["arrival-serve"]

FROM python312 AS trainer
# LightGBM's library links the system's OpenMP runtime (libgomp.so.1), which the slim image lacks
# (scikit-learn and XGBoost bundle their own). Pinned, as hadolint asks: trixie's version.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1=14.2.0-19 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --no-log-init --uid 10001 --user-group --create-home --shell /usr/sbin/nologin arrival
COPY --from=trainer-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DVC_NO_ANALYTICS=1
USER 10001:10001
WORKDIR /home/arrival
# No health check: the trainer serves no port, and its liveness is the heartbeat it renews while it
# holds a job, which the stack's reconciler watches (a trainer that stops renewing it is terminated
# and replaced). A check here could only restate that the process runs, which Docker knows already.
HEALTHCHECK NONE
CMD ["arrival-worker", "--role", "trainer"]

# MLflow's tracking server as `arrival up` runs it (localcloud/tracking_server.py): SQLite in
# /var/lib/mlflow (a volume in docker-compose.yml), artifacts in S3 behind the server's proxy.
FROM trainer AS mlflow
# Root only to create the volume's mount point, owned by the user the server runs as.
USER 0:0
RUN install --directory --owner=10001 --group=10001 /var/lib/mlflow
COPY docker/mlflow_store.py /opt/arrival/mlflow_store.py
USER 10001:10001
ENV MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ARRIVAL_MLFLOW_PORT', '5000') + '/health', timeout=2)"]
ENTRYPOINT ["python", "/opt/arrival/mlflow_store.py"]
CMD ["mlflow", "server", "--workers", "1", "--host", "0.0.0.0", "--port", "5000", \
     "--backend-store-uri", "sqlite:////var/lib/mlflow/mlflow.db", \
     "--artifacts-destination", "s3://arrival-mlflow-artifacts/"]

FROM python313 AS localstack
# The executor runs each function on the Python its runtime names (python3.12, template.yaml) and
# builds the function's virtualenv with uv: both come from the arrival images' base, beside
# LocalStack's 3.13 (the two images are built alike, on the same Debian).
COPY --from=uv /usr/local/bin/uv /usr/local/bin/uv
COPY --from=python312 /usr/local/bin/python3.12 /usr/local/bin/python3.12
COPY --from=python312 /usr/local/lib/python3.12 /usr/local/lib/python3.12
COPY --from=python312 /usr/local/lib/libpython3.12.so.1.0 /usr/local/lib/libpython3.12.so.1.0
RUN ldconfig \
    && python3.12 -c "import ssl, sqlite3, ctypes" \
    && useradd --no-log-init --uid 10001 --user-group --create-home --shell /usr/sbin/nologin localstack \
    && install --directory --owner=10001 --group=10001 \
        /var/lib/localstack /var/lib/localstack/cache /usr/lib/localstack /etc/localstack
COPY --from=localstack-venv /opt/localstack /opt/localstack
# What localcloud/emulator.py gives LocalStack on the host, except where a container differs: it
# listens on every interface of its network namespace; its data stays in the container, so it starts
# empty, as with `arrival up`; the function virtualenvs are cached under /var/lib/localstack/cache.
ENV PATH=/opt/localstack/bin:$PATH \
    VIRTUAL_ENV=/opt/localstack \
    PYTHONUNBUFFERED=1 \
    GATEWAY_LISTEN=0.0.0.0:4566 \
    LOCALSTACK_HOST=127.0.0.1:4566 \
    SQS_ENDPOINT_STRATEGY=path \
    DNS_ADDRESS=0 \
    SKIP_SSL_CERT_DOWNLOAD=1 \
    DISABLE_EVENTS=1 \
    LAMBDA_RUNTIME_EXECUTOR=arrival-process \
    LAMBDA_EVENT_SOURCE_MAPPING_MAX_BACKOFF_ON_EMPTY_POLL_SEC=1 \
    LAMBDA_EVENT_SOURCE_MAPPING_POLL_INTERVAL_SEC=0.05 \
    SQS_CLOUDWATCH_METRICS_REPORT_INTERVAL=10 \
    ARRIVAL_UV=/usr/local/bin/uv \
    ARRIVAL_LAMBDA_VENV_CACHE=/var/lib/localstack/cache/lambda-venvs \
    ARRIVAL_IAM_ENFORCEMENT=1 \
    UV_CACHE_DIR=/var/lib/localstack/cache/uv \
    UV_PYTHON_DOWNLOADS=never
USER 10001:10001
WORKDIR /var/lib/localstack
EXPOSE 4566
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['GATEWAY_LISTEN'].split(',')[0].rsplit(':', 1)[1] + '/_localstack/health', timeout=2)"]
CMD ["python", "-m", "localstack.runtime.main"]
