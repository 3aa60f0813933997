"""The application layer: small stages around one :class:`~recvae.run.context.RunContext`.

``context`` (where outputs go, how a run is watched), ``fit`` (search, fit, refit →
:class:`~recvae.run.fit.Fitted`), ``steps`` (test, save, log, top-k), ``model``
(:func:`~recvae.run.model.run_model`: one model from fit to files), ``ensemble`` (a blend of
the pipeline's members, chosen on validation), ``comparison`` (the model × metric table),
``pipeline`` (:func:`~recvae.run.pipeline.run_pipeline`: ingest, every model, later stages),
``report`` (the tables printed at the end).
"""
