# The gateway image: FastAPI + the Triton gRPC client, no model code (Triton holds the model).
# Pins match pyproject.toml (a test checks it). Not built on the development machine (no Docker engine).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install \
      "fastapi==0.165.0" "uvicorn[standard]==0.54.0" "pydantic==2.14.4" "pydantic-settings==2.16.3" \
      "cachetools==8.0.2" "prometheus-client==0.26.0" "redis==8.1.0" \
      "tritonclient[grpc]==2.73.0" "grpcio==1.85.3" "protobuf==6.33.6" "numpy==1.26.4" \
      "psycopg[binary]==3.3.9" "limits==5.8.0"

WORKDIR /app
# contract/ (standard library only) holds the label names and tensor names; the model version comes
# from Triton with every answer, so no model file and no export/ code is in this image.
COPY contract/ contract/
COPY gateway/ gateway/
RUN useradd --system --uid 10001 gateway && mkdir /data && chown gateway /data
# A writable place for the SQLite audit trail (when GATEWAY_AUDIT_BACKEND=sqlite): mount a volume here.
ENV GATEWAY_AUDIT_SQLITE_PATH=/data/audit.sqlite3
VOLUME /data
USER gateway

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
CMD ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", "8080"]
