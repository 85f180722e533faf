FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY adapters ./adapters
COPY protos ./protos
RUN pip install --no-cache-dir . && useradd --system --uid 10001 payorch
USER payorch
EXPOSE 50051 8181
ENTRYPOINT ["payorch"]
CMD ["serve"]
