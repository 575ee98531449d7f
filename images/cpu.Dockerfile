# CPU image for every w4s stage except GPU training. Build from the repository root:
#   docker build -f images/cpu.Dockerfile -t w4s:cpu .
FROM python:3.11-slim-bookworm

# bubblewrap gives the workflow sandbox its namespaces; without it w4s falls back (loudly).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap=0.8.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/w4s
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin w4s
USER 10001
ENTRYPOINT ["w4s"]
CMD ["sandbox", "doctor"]
