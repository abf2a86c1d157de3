"""The API's routes, one ``APIRouter`` per resource; ``latentq.api.app.create_app`` includes them all.

    jobs       POST /v1/jobs, GET /v1/jobs, GET and DELETE /v1/jobs/{id}
    batches    POST /v1/batches, GET /v1/batches/{id}
    results    GET /v1/results/{key}
    models     GET /v1/models
    health     GET /healthz, GET /metrics
    remote     POST /v1/models/{model}/decode and /encode (diffusers' remote_decode / remote_encode)
    console    GET / (the console), GET /v1/overview, the offline /docs

A route reads the application's job service and settings through ``Context`` (``latentq.api.context``);
what it raises is answered through ``latentq.errors.HTTP_ERRORS`` (``latentq.api.handlers``).
"""
