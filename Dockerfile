# One image per role, from one code base. EXTRAS picks what is installed:
#   ""  -> api, ingest worker, DICOM node and beat (no TensorFlow)
#   cpu -> CPU workers     gpu -> GPU workers
# BASE_IMAGE: the official image by default; deploy/local-images.sh makes a stand-in from
# Debian's packages where no registry can be reached.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

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
ENTRYPOINT ["pneumoscan"]
CMD ["api"]
