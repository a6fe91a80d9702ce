# The API image: FastAPI under uvicorn. CPU-only torch is enough here (uploads are validated on the CPU).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/diffaudit

RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision
COPY pyproject.toml README.md alembic.ini ./
COPY diffaudit ./diffaudit
COPY app ./app
COPY workers ./workers
COPY alembic ./alembic
RUN pip install .

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["sh", "-c", "diffaudit db upgrade && diffaudit serve --host 0.0.0.0 --port 8000 --processes 2"]
