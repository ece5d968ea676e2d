# fedmq device image: fedmq-edge with CPU torch (and the admin tool, used by the compose `init` job to
# write the initial model snapshot from the model's code).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends openssl && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY aggregator ./aggregator
COPY edge_client ./edge_client
COPY simulator ./simulator
COPY fedmq_admin ./fedmq_admin
COPY broker_config ./broker_config
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && pip install ".[edge]"
COPY docker ./docker
ENTRYPOINT ["fedmq-edge"]
