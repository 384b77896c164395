# Python 3.11 from Debian's packages, for machines that cannot pull python:3.11-slim.
# A virtual environment at /opt/python stands where the official image's /usr/local is:
# `python` and `pip` on PATH, packages installable. The build context holds this machine's
# CA bundle (host-ca.crt): pip inside builds trusts what pip on the host trusts.
ARG DEBIAN_IMAGE=pneumoscan-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/python
COPY host-ca.crt /etc/pneumoscan/host-ca.crt
ENV PATH=/opt/python/bin:$PATH \
    PIP_CERT=/etc/pneumoscan/host-ca.crt \
    PIP_DEFAULT_TIMEOUT=180 \
    LANG=C.UTF-8
CMD ["python3"]
