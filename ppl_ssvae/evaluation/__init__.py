"""Evaluation: what is measured on a trained model. Classification and clustering metrics
(``metrics``, ``clustering``), the IWAE log-likelihood (``likelihood``), anomaly scores
(``anomaly``), supervised baselines (``baselines``), the posterior inspection behind
``ppl-ssvae inspect`` (``inspect``) and the table of ``ppl-ssvae compare`` (``compare``).

Import the module you need (``from ppl_ssvae.evaluation import metrics``): each pulls in
only its own dependencies (scikit-learn, arviz, matplotlib)."""
