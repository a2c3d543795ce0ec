"""What warmup_helper does inside Triton, without Triton imports.

``request`` checks a request (a plan document), ``warmup_plan`` plans the
samples, ``config_rewrite`` writes config.pbtxt, ``repository_guard`` keeps
the repository whole, ``preflight`` runs new samples before Triton's warmup
can, ``job_planning`` plans every model of a request before any write,
``load_jobs`` then checks, writes and loads each,
``requests_mode`` warms loaded models with requests, and ``model_loading``
picks the way to the Model Loading API.
"""
