"""Training: the epoch loop's parts (`epochs`: one epoch, optimizers, augmentation,
evaluation of a split), the `EpochLoop` interface every train loop implements (`loop`),
losses, learning-rate scaling, and the extra training of some studies (energy fine-tuning
with outliers, the likelihood ratio's background model, GradCon / OCGAN epochs)."""
