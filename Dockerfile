# Two stages: build every wheel (the gateway and its dependencies), then install them offline into
# a clean image that runs as an unprivileged user. No secret is baked in: configuration comes from
# the environment (WA_*, GATEWAY_*) or a mounted TOML file. tests/test_packaging.py runs the same
# pip commands as these two RUN lines, so what the image installs is what `make test` proves.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY gateway ./gateway
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels /wheels/wa_gateway-*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
USER 10001
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# Reads the same configuration as the gateway, so it follows GATEWAY_LISTEN and the TLS listener.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["wa-gateway", "healthcheck"]
ENTRYPOINT ["wa-gateway"]
CMD ["serve"]
