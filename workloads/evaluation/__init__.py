"""Evaluation of a trained model: metrics (AUROC, FPR95, calibration, failure prediction),
bootstrap and t intervals, the OOD stage over every OOD set, mistake detection, temperature
scaling, deep ensembles, and document 002's latent linear separability."""
