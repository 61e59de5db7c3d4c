"""workflow_svc: agents, workflow definitions and versions, templates, step-type registry."""
