"""What every stage agrees on: model and tensor names, the GoEmotions labels, the model manifest.

Standard library only: the gateway, the Triton python models' tooling, export and tests all import it.
"""
