FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HUB_DATA_DIR=/var/lib/fulqrun-hub
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY hub ./hub
COPY workflows ./workflows
COPY activities ./activities
COPY connectors ./connectors
COPY rules ./rules
COPY webhooks ./webhooks
COPY routes ./routes
COPY console ./console
COPY ai ./ai
COPY api.py worker.py ./
RUN pip install --no-cache-dir . \
 && useradd --system --home /var/lib/fulqrun-hub --create-home hub
USER hub
EXPOSE 8000
CMD ["fulqrun-hub", "api", "--host", "0.0.0.0", "--port", "8000"]
