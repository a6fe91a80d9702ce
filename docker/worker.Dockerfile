# The GPU worker image: one Celery worker process per GPU, prefetch 1, consuming the gpu and cpu queues.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/diffaudit

RUN pip install --index-url https://download.pytorch.org/whl/cu124 torch torchvision
COPY pyproject.toml README.md alembic.ini ./
COPY diffaudit ./diffaudit
COPY app ./app
COPY workers ./workers
COPY alembic ./alembic
RUN pip install . flower

CMD ["diffaudit", "worker", "--queues", "gpu,cpu", "--concurrency", "1"]
