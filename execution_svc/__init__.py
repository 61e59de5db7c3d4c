"""execution_svc: runs, the durable step queue, workers, events, schedules and webhooks."""
