"""Stage 4: the FastAPI gateway learning platforms call.

Layers, top to bottom (nothing imports upwards): ``app`` (create_app, lifespan) → ``api`` (routers,
deps, response mapping, middleware, schemas) → ``services`` (build and close every service) → ``core``
(the analysis pipeline, served version, readiness, audit rows, rate limit) → ``backends`` (Triton,
result cache, learner store, audit trail) → leaves: ``learning`` (policy, learning state, trends),
``resilience`` (the one breaker), ``errors``, ``metrics``, ``settings``.
"""
