# The pullwake image: server, runner, publisher, alert sink and `stack wait`
# (the compose healthchecks) all run from it.  docker-compose.yml builds it.
FROM python:3.11.17-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed non-root uid; /data is where the server keeps its SQLite file (the named
# volume mounted there takes this ownership on first use).
RUN useradd --create-home --uid 10001 --user-group pullwake \
    && mkdir /data && chown pullwake:pullwake /data

WORKDIR /src
# Only what the package needs (see .dockerignore), so edits to tests or docs do not
# invalidate the install layer.
COPY pyproject.toml README.md ./
COPY pullwake ./pullwake
COPY runner ./runner
COPY server ./server
COPY otel-collector ./otel-collector
COPY dashboards ./dashboards
RUN pip install . && rm -rf /src

USER pullwake
WORKDIR /home/pullwake
ENTRYPOINT ["pullwake"]
CMD ["--help"]
