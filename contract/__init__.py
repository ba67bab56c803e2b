"""What every stage agrees on, in one small package that every stage imports.

- ``names``: model and tensor names, the GoEmotions label list (the only copy in code)
- ``manifest``: the model's identity (labels, files, variants, thresholds, digest) and the check that an
  install is complete
- ``spec``: the serving settings every Triton config is generated from
- ``text``: the normalisation shared by the gateway's cache key and the tokenizer model

Standard library only, on purpose: the Triton python models import it inside the Triton image (which
has numpy and tokenizers, not pydantic), and so does the GPU host, which brings no packages of ours.
The layer rules (pyproject.toml, ``[tool.importlinter]``) keep it free of every stage.
"""
