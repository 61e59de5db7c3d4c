"""The aiohttp REST edge: transcodes REST to the FlowForge gRPC services, serves docs and metrics."""
