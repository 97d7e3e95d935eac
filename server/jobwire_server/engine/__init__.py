"""Long-lived services: dispatcher, executor, change writer, watch hub, lease keeper."""
