"""Example clients: Triton directly (gRPC/HTTP) and the gateway's WebSocket stream."""
