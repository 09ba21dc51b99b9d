# collab in a container: Node builds the editor, a wheel is built with it inside, and a slim
# Python image runs it as a non-root user. The same image runs on App Engine flexible
# (app.yaml: runtime custom), Cloud Run and Kubernetes; configure it with COLLAB_* variables.
#
#   docker build -t collab .
#   docker run -p 8080:8080 collab          # one instance, SQLite in /srv/collab/data

FROM node:20-slim AS editor
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY collab/ collab/
COPY --from=editor /src/web/dist/ web/dist/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels/ /wheels/
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /srv/collab --create-home collab
USER collab
WORKDIR /srv/collab
# Listen on every interface, on the port the platform names in PORT (8080 otherwise).
ENV COLLAB_HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080
CMD ["sh", "-c", "exec collab serve --port \"$PORT\""]
