# One image per role, from one code base. EXTRAS picks what is installed:
#   ""  -> api and beat (no TensorFlow)     cpu -> CPU workers     gpu -> GPU workers
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# A named volume mounted on /data/storage starts with this ownership.
RUN useradd --create-home --uid 10001 pneumoscan \
 && mkdir -p /data/storage /import \
 && chown -R pneumoscan:pneumoscan /data

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY core ./core
COPY api ./api
COPY worker ./worker
COPY training ./training
COPY cli ./cli
COPY migrations ./migrations

ARG EXTRAS=""
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

USER pneumoscan
ENV PNEUMOSCAN_HOME=/data \
    PNEUMOSCAN_API_HOST=0.0.0.0
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
ENTRYPOINT ["pneumoscan"]
CMD ["api"]
