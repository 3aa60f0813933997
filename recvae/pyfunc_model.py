"""The code MLflow runs to build a logged recvae model (MLflow's *models from code*).

:func:`recvae.tracking.logged_model.log_pyfunc` logs this file as the model's ``python_model``;
``mlflow.pyfunc.load_model`` executes it, so loading a recvae model unpickles nothing: the
weights are plain arrays (``.npy``/``.npz``/Parquet) read by :func:`recvae.models.load_model`.
"""

import mlflow.models

from recvae.pyfunc import RecvaeTopK

mlflow.models.set_model(RecvaeTopK())
