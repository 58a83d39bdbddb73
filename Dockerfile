# stylebot for a GPU host: TensorFlow's CUDA build, the bot, and VGG19's ImageNet weights
# fetched at build time, so a container starts without network access to anything but Discord.
#
#   docker build -t stylebot .
#   docker run -d --name stylebot --gpus all --init --restart unless-stopped \
#       -e DISCORD_TOKEN -v "$PWD/config.toml:/config/config.toml:ro" -v stylebot-data:/data \
#       -p 127.0.0.1:8080:8080 stylebot
#
# Needs the NVIDIA driver and the NVIDIA Container Toolkit on the host (README: "Docker with the
# NVIDIA container runtime"). The CUDA and cuDNN libraries come with the tensorflow[and-cuda] wheels.

FROM python:3.11-slim

ARG TF_VERSION=2.21.0

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/opt/keras \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NSTBOT_STORAGE__PATH=/data/stylebot.sqlite3 \
    NSTBOT_HEALTH__PORT=8080 \
    NSTBOT_HEALTH__HOST=0.0.0.0

# TensorFlow first: the largest layer, rebuilt only when TF_VERSION changes.
RUN pip install "tensorflow[and-cuda]==${TF_VERSION}"

# The ImageNet weights (notop VGG19, about 80 MB) into $KERAS_HOME/models, readable by anyone.
RUN python -c "import keras; keras.applications.VGG19(include_top=False, weights='imagenet')" \
    && ls -l "$KERAS_HOME/models" \
    && chmod -R a+rX "$KERAS_HOME"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY nst_core ./nst_core
COPY bot ./bot
RUN pip install ".[bot]"

# A user without privileges; the job database and spool live on the /data volume.
RUN useradd --system --uid 10001 --create-home --home-dir /home/stylebot stylebot \
    && mkdir -p /data /config \
    && chown stylebot:stylebot /data
USER stylebot
VOLUME ["/data"]
EXPOSE 8080

# 200 while the gateway is connected, a worker is alive and the job store can be written.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NSTBOT_HEALTH__PORT', '8080') + '/healthz', timeout=8)" || exit 1

# The token comes only from the DISCORD_TOKEN environment variable; the settings from the mount.
ENTRYPOINT ["python", "-m", "bot", "--config", "/config/config.toml"]
