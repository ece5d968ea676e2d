# fedmq runtime image: the aggregator and edge devices (CPU torch).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY aggregator ./aggregator
COPY edge_client ./edge_client
COPY simulator ./simulator
COPY broker_config ./broker_config
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && pip install ".[edge]"
COPY docker ./docker
ENTRYPOINT ["fedmq-aggregator"]
