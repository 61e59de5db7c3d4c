"""What every FlowForge process needs: settings, database, gRPC bootstrap, auth, telemetry."""
