"""A trained model (a local checkpoint) on new 2-D images, 3-D volumes and DICOM series, with SimpleITK in and
out and the input's geometry kept: `run` (the model and the prediction), `io` (files and the overview figure),
`tiles` (centre crops and blended tiles)."""

from .run import LoadedModel, PredictOutcome, load_model, predict, predict_volume, training_size

__all__ = ["LoadedModel", "PredictOutcome", "load_model", "predict", "predict_volume", "training_size"]
