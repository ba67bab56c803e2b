"""What the gateway talks to: Triton, the result cache, the learner store, the audit trail. Each sits
behind the same failure policy (``gateway.resilience``). Nothing here imports the core or the API."""
