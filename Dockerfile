# syntax=docker/dockerfile:1
# profiler worker image: `docker build -t profiler .`
#
# The default command, `profiler run`, starts a worker and serves its web
# endpoints (/health, /ready, /metrics, /profile/{user_id}) on PROFILER_WEB_PORT,
# which the HEALTHCHECK probes; `faust -A stream.app worker` also works as the
# command and serves the same paths. Configuration is PROFILER_* environment
# variables (`docker run --rm profiler profiler config`).
#
# TORCH_SPEC (build arg, as in the Makefile) adds a torch build to the image,
# e.g. `--build-arg TORCH_SPEC=torch` for PyPI's CUDA build, and EXTRAS=encoder
# the transformer encoder for interest vectors (the gpu profile of
# docker-compose.yml sets both); both empty by default, which gives a worker
# without vectors (PROFILER_ENCODER_MODEL=auto finds no encoder and says so).

FROM python:3.11-slim AS build
ARG TORCH_SPEC=""
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY profiling ./profiling
COPY stream ./stream
# Every dependency as a wheel, so the runtime stage installs offline and needs no compiler.
RUN pip wheel --wheel-dir /wheels ${TORCH_SPEC:+"$TORCH_SPEC"} ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
ARG TORCH_SPEC=""
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROFILER_WEB_PORT=6066
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels ${TORCH_SPEC:+"$TORCH_SPEC"} "profiler${EXTRAS:+[$EXTRAS]}" \
    && useradd --create-home --home-dir /var/lib/profiler --uid 10001 --user-group profiler
# A working directory the user owns (Faust, if used, keeps its data directory there).
WORKDIR /var/lib/profiler
USER profiler
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PROFILER_WEB_PORT', '6066'), timeout=3)"]
STOPSIGNAL SIGTERM
CMD ["profiler", "run"]
