# The control plane as an image: the package and its pinned dependencies are installed when the image is
# built, so a container needs no network to start (only to fetch the modules its plugins name).
#   docker build -t wasm-controlplane .
#   docker run -v "$PWD/fixtures:/fixtures:ro" -p 18000:18000 -p 18001:18001 wasm-controlplane \
#       --config-dir /fixtures/config --host 0.0.0.0 --advertise-address HOST
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY controlplane ./controlplane
# A plain (not editable) install into its own prefix, copied whole into the final image below.
RUN pip install --no-cache-dir --disable-pip-version-check --prefix=/install -c constraints.txt .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# A fixed numeric uid, so that Kubernetes can check runAsNonRoot without reading /etc/passwd.
RUN useradd --system --uid 10001 --home-dir /nonexistent --no-create-home controlplane \
    && mkdir -p /var/cache/controlplane && chown 10001:10001 /var/cache/controlplane
USER 10001:10001
ENV PYTHONUNBUFFERED=1 \
    CONTROLPLANE_READY_URL=http://127.0.0.1:18002/ready
EXPOSE 18000 18001
# /ready is on the admin port (loopback, 18002 unless --admin-port says otherwise); set CONTROLPLANE_READY_URL to match.
HEALTHCHECK --interval=10s --timeout=3s --start-period=40s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['CONTROLPLANE_READY_URL'], timeout=2)"]
VOLUME /var/cache/controlplane
ENTRYPOINT ["controlplane", "serve"]
CMD ["--config-dir", "/config", "--cache-dir", "/var/cache/controlplane"]
