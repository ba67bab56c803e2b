"""Stage 3: run Triton (the embedded CPU server; the GPU container is in docker-compose.yml)."""
