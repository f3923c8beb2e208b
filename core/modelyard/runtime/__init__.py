"""The API-neutral runtime: the backend contract, the inference service, the scheduler, plugin discovery."""
