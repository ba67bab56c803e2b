"""Stage 4: the FastAPI gateway learning platforms call."""
